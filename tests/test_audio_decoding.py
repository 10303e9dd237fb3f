"""Audio decoding for the edge runtime (lifecycle.edge.audio_decoding): WAV (16-bit, 24-bit, float) and FLAC
written here by soundfile, averaged to mono, resampled by scipy's polyphase filter, and every refusal with the
HTTP status a service answers: non-audio bytes, other formats, cut files, too many channels, refused rates,
and a FLAC that declares 10 minutes in 90 kB (refused from its header, before a frame is decoded)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from lifecycle.edge import AudioError, decode_audio, open_audio, resample


def encode(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_every_encoding_decodes_to_the_same_mono_float32_samples():
    wave = tone(440, 0.25, 16000)
    reference, rate = decode_audio(encode(wave, 16000, "WAV", "FLOAT"))
    assert rate == 16000 and reference.dtype == np.float32 and reference.ndim == 1
    np.testing.assert_array_equal(reference, wave)  # float WAV: the samples themselves
    for fmt, subtype, step in (("WAV", "PCM_16", 2**-15), ("WAV", "PCM_24", 2**-23), ("FLAC", "PCM_16", 2**-15),
                               ("FLAC", "PCM_24", 2**-23)):
        got, rate = decode_audio(encode(wave, 16000, fmt, subtype))
        assert rate == 16000 and got.dtype == np.float32 and got.shape == wave.shape, (fmt, subtype)
        assert np.abs(got - wave).max() <= step, (fmt, subtype)  # within one quantisation step
    # lossless: the same 16-bit samples in a WAV and in a FLAC decode to the same floats, x / 32768
    ints = np.rint(wave * 32767).astype(np.int16)
    flac, wav = decode_audio(encode(ints, 16000, "FLAC"))[0], decode_audio(encode(ints, 16000))[0]
    np.testing.assert_array_equal(flac, wav)
    np.testing.assert_array_equal(wav, ints / np.float32(32768))


def test_stereo_is_averaged_to_mono_and_keeps_its_own_rate():
    left, right = tone(300, 0.2, 44100), tone(500, 0.2, 44100, amp=0.25)
    mono, rate = decode_audio(encode(np.stack([left, right], axis=1), 44100, "WAV", "FLOAT"))
    assert rate == 44100 and mono.shape == left.shape
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    info = open_audio(encode(np.stack([left, right], axis=1), 44100, "WAVEX", "PCM_24"))
    assert (info.format, info.channels, info.samplerate) == ("WAV", 2, 44100)  # an extensible WAV is a WAV


def test_resample_is_scipys_polyphase_filter_with_the_ratio_reduced():
    wave = tone(440, 0.5, 44100) + np.random.default_rng(0).normal(0, 0.05, 22050).astype(np.float32)
    got = resample(wave, 44100, 16000)
    assert got.dtype == np.float32 and len(got) == 8000
    np.testing.assert_array_equal(got, resample_poly(wave, 160, 441).astype(np.float32))
    up = resample(tone(440, 0.5, 8000), 8000, 16000)
    np.testing.assert_array_equal(up, resample_poly(tone(440, 0.5, 8000), 2, 1).astype(np.float32))
    np.testing.assert_array_equal(resample(wave, 16000, 16000), wave)  # the same rate: unchanged


def _flac_bomb() -> bytes:  # 10 minutes of digital silence at 48 kHz: 28.8 M frames in about 90 kB
    return encode(np.zeros(48000 * 600, dtype=np.int16), 48000, "FLAC")


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


CLIP = tone(440, 1.0, 16000)
REFUSED = [
    ("text", b"this is plainly not audio, just some text", 415, "not a WAV or FLAC file"),
    ("empty body", b"", 415, "not a WAV or FLAC file"),
    ("an Ogg Vorbis file", encode(CLIP, 16000, "OGG", "VORBIS"), 415, "OGG audio is not accepted"),
    ("a cut WAV", _cut(encode(CLIP, 16000)), 422, "truncated WAV"),
    ("a cut FLAC", _cut(encode(CLIP, 16000, "FLAC")), 422, "FLAC audio could not be decoded"),
    ("a WAV of no frames", encode(np.zeros(0, np.float32), 16000), 422, "holds no audio frames"),
    ("three channels", encode(np.zeros((800, 3), np.float32), 16000), 415, "3 channels; the limit is 2"),
    ("96 kHz", encode(np.zeros(960, np.float32), 96000), 415, "sample rate 96000 Hz is refused"),
    ("4 kHz", encode(np.zeros(400, np.float32), 4000), 415, "sample rate 4000 Hz is refused"),
    ("31 s", encode(np.zeros(8000 * 31, np.int16), 8000), 413, "31.0 s of audio"),
    ("a FLAC bomb", _flac_bomb(), 413, "600.0 s of audio (28800000 frames at 48000 Hz); the limit is 30 s"),
]


@pytest.mark.parametrize(("case", "data", "status", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refusals_name_the_problem_with_the_status_a_service_answers(case, data, status, says):
    with pytest.raises(AudioError) as refused:
        decode_audio(data)
    assert refused.value.status == status and says in refused.value.reason, refused.value.reason


def test_a_flac_bomb_is_refused_from_its_header_before_any_frame_is_decoded():
    bomb = _flac_bomb()
    assert len(bomb) < 200_000
    with pytest.raises(AudioError) as refused:
        open_audio(bomb)  # reads the header only: the check needs no decoding
    assert refused.value.status == 413
    assert open_audio(bomb, max_seconds=None).frames == 48000 * 600  # what the header declares


def test_limits_are_parameters_and_none_lifts_them():
    long = encode(np.zeros(8000 * 31, np.int16), 8000)
    assert len(decode_audio(long, max_seconds=None)[0]) == 8000 * 31
    three = encode(np.zeros((800, 3), np.float32), 16000)
    assert decode_audio(three, max_channels=None)[0].shape == (800,)
    with pytest.raises(AudioError, match="FLAC audio is not accepted"):
        decode_audio(encode(CLIP, 16000, "FLAC"), formats=("WAV",))
    with pytest.raises(AudioError, match="1.0 s of audio .* the limit is 0.5 s"):
        decode_audio(encode(CLIP, 16000), max_seconds=0.5)
