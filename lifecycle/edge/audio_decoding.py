"""Audio bytes -> a mono float32 wave: bounded decoding (header first) and the one resampler, used by the
data layer (lifecycle.data.audio), the edge runtime and the service, so the same file gives the same samples
everywhere. soundfile (libsndfile) reads WAV and FLAC; scipy's polyphase filter resamples. Both are imported
inside the functions: the edge package stays importable without them for the other modalities.

open_audio reads the header only and checks every limit before a sample is decoded: a FLAC of 10 minutes of
digital silence is about 90 kB and declares 28.8 M frames, refused there (413) without decoding them."""

from __future__ import annotations

import io
from math import gcd

import numpy as np

AUDIO_FORMATS = ("WAV", "FLAC")  # what decode_audio accepts unless told otherwise
MAX_AUDIO_SECONDS = 30.0  # decode_audio's default limit (frames / sample rate, from the header)
MAX_CHANNELS = 2
SAMPLE_RATES = (8000, 48000)  # the sample rates accepted (inclusive) and resampled to the model's


class AudioError(ValueError):
    """Bytes that are not audio the model takes: `status` is the HTTP status a service answers with
    (413: too long, 415: not an allowed format, channel count or sample rate, 422: truncated or undecodable)."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.reason, self.status = reason, status


def open_audio(data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS, formats=AUDIO_FORMATS,
               max_channels: int | None = MAX_CHANNELS, rates: tuple[int, int] = SAMPLE_RATES):
    """Encoded bytes -> soundfile's header info (format, samplerate, channels, frames), every limit checked
    and nothing decoded. `format` is "WAV" for WAVE_FORMAT_EXTENSIBLE files too. None: no limit."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(bytes(data)))
    except Exception:  # noqa: BLE001 - libsndfile refuses hostile bytes in many ways; all mean the same here
        raise AudioError(f"not a {' or '.join(formats)} file", 415) from None
    info.format = "WAV" if info.format == "WAVEX" else info.format
    if info.format not in formats:
        raise AudioError(f"{info.format} audio is not accepted (send {' or '.join(formats)})", 415)
    if max_channels is not None and info.channels > max_channels:
        raise AudioError(f"{info.channels} channels; the limit is {max_channels}"
                         f"{' (mono or stereo)' if max_channels == 2 else ''}", 415)
    if not rates[0] <= info.samplerate <= rates[1]:
        raise AudioError(f"sample rate {info.samplerate} Hz is refused; send {rates[0]} to {rates[1]} Hz", 415)
    seconds = info.frames / info.samplerate
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(f"{seconds:.1f} s of audio ({info.frames} frames at {info.samplerate} Hz); the limit is "
                         f"{max_seconds:g} s", 413)
    missing = _wav_missing_bytes(data) if info.format == "WAV" else 0
    if missing:  # libsndfile shortens a cut WAV's length silently; the data chunk's own size says it was cut
        raise AudioError(f"truncated WAV: the data chunk is {missing} bytes shorter than its header says", 422)
    if info.frames <= 0:
        raise AudioError(f"{info.format} file holds no audio frames", 422)
    return info


def decode_audio(data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS, formats=AUDIO_FORMATS,
                 max_channels: int | None = MAX_CHANNELS, rates: tuple[int, int] = SAMPLE_RATES):
    """Encoded bytes -> (float32 mono wave, its sample rate): open_audio's checks, every frame the header
    declares decoded, channels averaged. A file that yields fewer frames than declared is refused (422)."""
    import soundfile

    info = open_audio(data, max_seconds, formats, max_channels, rates)
    try:
        frames, rate = soundfile.read(io.BytesIO(bytes(data)), frames=info.frames, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - a decoder fed hostile bytes can raise nearly anything
        raise AudioError(f"{info.format} audio could not be decoded (truncated or corrupt: {str(exc)[:120]})",
                         422) from None
    if len(frames) < info.frames:
        raise AudioError(f"truncated {info.format}: {len(frames)} of the {info.frames} frames its header declares "
                         "could be decoded", 422)
    return frames.mean(axis=1, dtype=np.float32), rate


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """A float32 wave at `rate` Hz -> at `target` Hz, by scipy's polyphase filter (up / down reduced by their
    gcd: 8 kHz -> 16 kHz is up 2, down 1). The same rate gives the wave back unchanged."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate == target:
        return wave
    try:  # a bundle served at its own rate needs no scipy; another rate does
        from scipy.signal import resample_poly
    except ImportError:
        raise AudioError(f"{rate} Hz audio needs resampling to the model's {target} Hz, which needs scipy here: "
                         f"send {target} Hz audio, or pip install scipy", 415) from None

    g = gcd(int(rate), int(target))
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def _wav_missing_bytes(data: bytes) -> int:
    """How many bytes a RIFF WAV's data chunk lacks against the size its header declares (0: complete, or a
    streamed file whose size field is 0 or 0xFFFFFFFF, or not a plain RIFF file)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = bytes(data[pos : pos + 4]), int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            return 0 if size in (0, 0xFFFFFFFF) else max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return 0
