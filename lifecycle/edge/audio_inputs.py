"""Audio -> an audio graph's `input_values`: log-mel filter banks computed as transformers'
ASTFeatureExtractor computes them without torchaudio (its numpy path: 400-sample Hann frames every 160
samples, DC offset removed, pre-emphasis 0.97, 512-point FFT power, Kaldi-scale mel filters from 20 Hz to
half the rate, natural log floored at 2^-23), padded with zeros or cut to `max_length` frames, then
(x - mean) / (2 * std). The parameters are that extractor's preprocessor_config.json, so
ASTFeatureExtractor.from_pretrained(dir) gives the same tensor (tested); here it needs only numpy, and
training, the stages, the edge runtime and the service all go through this one transform.

One option is ours, not the extractor's: `"stretch_frames": true` stretches (or shrinks) each clip's frames
to exactly `max_length` by linear interpolation along time instead of padding or cutting them, so a word's
length (a speaker's speaking rate, the silence around it) no longer changes where its sounds fall; such a
config is read only by this transform (ASTFeatureExtractor would ignore the key and pad).

Frames are counted in samples, as the extractor does: at 8 kHz a frame is 50 ms and the hop 20 ms. A
clip shorter than one frame is padded with silence to one frame (the extractor would fail on it).
AudioInputs is the inputs kind "audio": encoded WAV/FLAC bytes (lifecycle.edge.audio_decoding) or 1-D
float32 waveforms already at the model's rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FEATURE_EXTRACTOR = "preprocessor_config.json"
FRAME, HOP, FFT = 400, 160, 512
MEL_FLOOR = 1.192092955078125e-07
PREEMPHASIS = 0.97


def _mel(freq):
    return 1127.0 * np.log(1.0 + freq / 700.0)


def mel_filters(sampling_rate: int, bins: int) -> np.ndarray:
    """(FFT // 2 + 1, bins) triangular filters, triangular on the Kaldi mel scale (transformers'
    mel_filter_bank(..., mel_scale="kaldi", triangularize_in_mel_space=True))."""
    centres = np.linspace(_mel(20.0), _mel(sampling_rate // 2), bins + 2)
    fft_mels = _mel(sampling_rate / FFT * np.arange(FFT // 2 + 1))
    slopes = centres[None, :] - fft_mels[:, None]
    width = np.diff(centres)
    return np.maximum(np.zeros(1), np.minimum(-slopes[:, :-2] / width[:-1], slopes[:, 2:] / width[1:]))


class AudioPreprocessing:
    """1-D float waveforms at `sampling_rate` -> `input_values` (n, max_length, num_mel_bins) float32."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.sampling_rate = int(spec["sampling_rate"])
        self.bins, self.frames = int(spec["num_mel_bins"]), int(spec["max_length"])
        self.filters = mel_filters(self.sampling_rate, self.bins)
        self.window = np.hanning(FRAME)

    @classmethod
    def load(cls, path: Path) -> AudioPreprocessing:
        return cls(json.loads(Path(path).read_text()))

    @classmethod
    def fit(cls, waves: list, sampling_rate: int, num_mel_bins: int = 64, max_length: int | None = None) -> dict:
        """An ASTFeatureExtractor config for these (training) clips: `max_length` (None: the frames of the
        longest clip, so nothing is cut) and mean / std over their frames, padding left out."""
        spec = {"feature_extractor_type": "ASTFeatureExtractor", "feature_size": 1, "sampling_rate": sampling_rate,
                "num_mel_bins": num_mel_bins, "max_length": 1, "padding_value": 0.0, "padding_side": "right",
                "do_normalize": False, "mean": 0.0, "std": 0.5, "return_attention_mask": False}
        pre = cls(spec)
        banks = [pre.fbank(w) for w in waves]
        values = np.concatenate([b.ravel() for b in banks]).astype(np.float64) if banks else np.zeros(1)
        std = float(values.std())
        return {**spec, "max_length": int(max_length or max((len(b) for b in banks), default=1)), "do_normalize": True,
                "mean": float(values.mean()), "std": std if std > 1e-6 else 0.5}

    def fbank(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel frames (frames, bins) float32 of one clip, unpadded."""
        x = np.asarray(wave, dtype=np.float64)
        if len(x) < FRAME:
            x = np.pad(x, (0, FRAME - len(x)))
        count = 1 + (len(x) - FRAME) // HOP
        frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:count].copy()
        frames -= frames.mean(axis=1, keepdims=True)
        frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
        frames[:, 0] *= 1 - PREEMPHASIS
        frames *= self.window
        spectrum = np.fft.rfft(frames, n=FFT).astype(np.complex64)  # the extractor keeps complex64
        power = np.abs(spectrum, dtype=np.float64) ** 2
        return np.log(np.maximum(MEL_FLOOR, power @ self.filters)).astype(np.float32)

    def blank(self) -> np.ndarray:
        return np.zeros(self.sampling_rate, dtype=np.float32)  # one second of silence

    def waveform(self, item) -> np.ndarray:
        """One input as float32 samples at the model's rate: WAV/FLAC bytes are decoded (mono) and resampled;
        an array must already be a 1-D float waveform at `sampling_rate`."""
        if isinstance(item, (bytes, bytearray, memoryview)):
            from .audio_decoding import decode_audio, resample

            wave, rate = decode_audio(bytes(item))
            return resample(wave, rate, self.sampling_rate)
        if isinstance(item, np.ndarray) and item.ndim == 1 and item.dtype.kind == "f" and np.isfinite(item).all():
            return item.astype(np.float32, copy=False)
        from .audio_decoding import AudioError

        if not isinstance(item, np.ndarray) or item.ndim != 1 or item.dtype.kind != "f":
            shown = f"{item.dtype} {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
            raise AudioError(f"expected WAV/FLAC bytes or a 1-D float waveform at {self.sampling_rate} Hz, got {shown}")
        raise AudioError("the waveform holds NaN or infinite samples")

    def normalise(self, bank: np.ndarray) -> np.ndarray:
        """One clip's frames padded with zeros or cut to max_length (or stretched to it), then normalised (float32)."""
        if self.spec.get("stretch_frames"):
            bank = stretch(bank, self.frames)
        out = np.zeros((self.frames, self.bins), dtype=np.float32)
        out[: min(len(bank), self.frames)] = bank[: self.frames]
        if self.spec.get("do_normalize", True):
            out = (out - self.spec["mean"]) / (self.spec["std"] * 2)
        return out

    def transform(self, items: list) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.frames, self.bins), dtype=np.float32)
        return np.stack([self.normalise(self.fbank(self.waveform(item))) for item in items])  # float32 already


def stretch(bank: np.ndarray, frames: int) -> np.ndarray:
    """(n, bins) frames linearly interpolated along time to (frames, bins); the first and last frames kept."""
    at = np.linspace(0.0, len(bank) - 1, frames)
    low = np.floor(at).astype(int)
    high = np.minimum(low + 1, len(bank) - 1)
    weight = (at - low)[:, None]
    return (bank[low] * (1 - weight) + bank[high] * weight).astype(np.float32)


def wav_bytes(wave: np.ndarray, sampling_rate: int) -> bytes:
    """A float32 waveform as a 32-bit float WAV file (lossless: the same samples come back)."""
    import io

    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(wave, dtype=np.float32), sampling_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


class AudioInputs:
    """Inputs kind "audio": WAV/FLAC bytes or float32 waveforms through the model's preprocessor_config.json.
    Every clip becomes max_length frames (max_length 0: no token length), so any clips share a call."""

    max_length = 0

    def __init__(self, root: Path, schema: dict):
        self.audio = AudioPreprocessing.load(Path(root) / FEATURE_EXTRACTOR)

    def sample(self) -> np.ndarray:
        return self.audio.blank()

    def recorded(self, entry: dict) -> bytes:
        import base64

        return base64.b64decode(entry["audio"], validate=True)  # recorded as base64 float WAV

    def feeds(self, predictor, clips: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        return {"input_values": self.audio.transform(list(clips))}

    def outputs(self, predictor, clips: list, batch_size: int) -> np.ndarray:
        return predictor.run_batched("input_values", self.audio.transform(list(clips)), batch_size)
