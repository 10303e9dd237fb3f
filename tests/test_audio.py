"""Spoken-word classification end to end (lifecycle.workloads.audio) on audio generated here (tones, chirps and
noise at 8 and 16 kHz, written as WAV and FLAC), so CI needs no shared data: the edge features against
transformers' own extractor, masked-spectrogram pre-training whose encoder the classifier starts from, a
real finetune -> distill -> export -> int8 -> serve chain, the bundle classifying a WAV file with onnxruntime and
numpy only, and (slow) the FSDD pipeline on the real recordings of ../shared/data/speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lifecycle import ConfigError, config, pipeline
from lifecycle.edge import FEATURE_EXTRACTOR, AudioPreprocessing, Predictor

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
TRAIN = {"epochs": 30, "batch_size": 16, "lr": 2.0e-3, "warmup_ratio": 0.0, "logging_steps": 50}  # 60 steps


def quiet(*_a, **_k):
    pass


def metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


def clip(kind: str, rate: int, seconds: float, rng) -> np.ndarray:
    """A tone at 300 Hz ("low"), at 1.5 kHz ("high") or a rising chirp ("chirp"), with noise and a random gain."""
    t = np.arange(int(rate * seconds)) / rate
    phase = {"low": 300 * t, "high": 1500 * t, "chirp": 300 * t + 1200 * t**2 / seconds}[kind]
    wave = np.sin(2 * np.pi * phase) * rng.uniform(0.2, 0.8) + rng.normal(0, 0.02, len(t))
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """An audiofolder: 3 classes x 16 clips of 0.3-0.9 s, most at 8 kHz, every fourth at 16 kHz, some FLAC."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for kind in ("low", "high", "chirp"):
        (root / kind).mkdir()
        for i in range(16):
            rate = 16000 if i % 4 == 0 else 8000
            suffix = "flac" if i % 5 == 0 else "wav"
            soundfile.write(root / kind / f"{kind}_{i}.{suffix}", clip(kind, rate, rng.uniform(0.3, 0.9), rng), rate)
    return root


def tones_pipeline(root: Path, stages: list, **task) -> dict:
    return {"name": "tones", "seed": 0,
            "data": {"tones": {"format": "audiofolder", "path": str(root), "split": {"validation": 0.2, "test": 0.2},
                               "audio": {"sampling_rate": 8000}}},
            "task": {"type": "audio-classification", "data": "tones", "max_length": 32, **task}, "stages": stages}


# ------------------------------------------------------------------------------------------ features
def test_the_edge_features_are_transformers_ast_extractor_bit_for_bit(tmp_path):
    from transformers import ASTFeatureExtractor

    rng = np.random.default_rng(1)
    waves = [clip("chirp", 8000, s, rng) for s in (0.04, 0.5, 1.2, 2.0)]  # one shorter than a frame
    spec = AudioPreprocessing.fit(waves[1:], 8000, num_mel_bins=40, max_length=64)
    assert spec["max_length"] == 64 and spec["do_normalize"] and spec["std"] > 0
    (tmp_path / FEATURE_EXTRACTOR).write_text(json.dumps(spec))
    ours = AudioPreprocessing.load(tmp_path / FEATURE_EXTRACTOR).transform(waves[1:])
    theirs = ASTFeatureExtractor.from_pretrained(tmp_path)(waves[1:], sampling_rate=8000, return_tensors="np")
    assert ours.dtype == np.float32 and ours.shape == (3, 64, 40)
    assert np.array_equal(ours, theirs["input_values"])  # padding of the short clip and cutting of the long one too
    short = AudioPreprocessing(spec).transform(waves[:1])  # the extractor fails under one frame; here: one frame
    assert short.shape == (1, 64, 40) and np.isfinite(short).all()


def test_stretched_frames_fill_max_length_and_a_slower_word_lands_where_a_faster_one_does():
    rng = np.random.default_rng(3)
    fast, slow = clip("chirp", 8000, 0.4, rng), clip("chirp", 8000, 0.8, rng)  # one sweep, the second twice as slow
    spec = AudioPreprocessing.fit([fast, slow], 8000, num_mel_bins=12, max_length=48)
    padded = AudioPreprocessing(spec)
    stretched = AudioPreprocessing({**spec, "stretch_frames": True}).transform([fast, slow])
    assert stretched.shape == (2, 48, 12) and stretched.dtype == np.float32
    bank = padded.fbank(fast)
    assert np.allclose(stretched[0][[0, -1]], padded.normalise(bank)[[0, len(bank) - 1]])  # its first and last frames
    apart = padded.transform([fast, slow])
    assert np.abs(stretched[0] - stretched[1]).mean() < 0.5 * np.abs(apart[0] - apart[1]).mean()


def test_a_float_wav_carries_the_samples_unchanged():
    from lifecycle.edge import decode_audio, wav_bytes

    wave = clip("low", 8000, 0.3, np.random.default_rng(2))
    decoded, rate = decode_audio(wav_bytes(wave, 8000))
    assert rate == 8000 and np.array_equal(decoded, wave)
    pre = AudioPreprocessing(AudioPreprocessing.fit([wave], 8000, max_length=32))
    assert np.array_equal(pre.transform([wav_bytes(wave, 8000)]), pre.transform([wave]))


def test_the_masked_decoder_targets_are_the_patches_the_encoder_embeds():
    from lifecycle.models import ModelSource
    from lifecycle.workloads.audio.masked import ASTForMaskedSpectrogram, patch_count
    from lifecycle.workloads.audio.model import ast_config

    source = ModelSource(preset="bert-tiny", overrides={"patch_size": 8, "stride": 8, "hidden_size": 16})
    model = ASTForMaskedSpectrogram(ast_config({"num_mel_bins": 32, "max_length": 48}, source)).eval()
    x = torch.randn(2, 48, 32)
    patches = model.patches(x)
    assert patches.shape == (2, patch_count(model.config), 64) == (2, 24, 64)
    conv = model.audio_spectrogram_transformer.embeddings.patch_embeddings.projection
    embedded = patches @ conv.weight.reshape(16, -1).T + conv.bias  # the conv is this product, patch by patch
    assert torch.allclose(embedded, model.audio_spectrogram_transformer.embeddings.patch_embeddings(x), atol=1e-5)
    out = model(input_values=x, bool_masked_pos=torch.rand(2, 24) < 0.5)
    assert out["reconstruction"].shape == patches.shape and out["loss"] > 0


# ------------------------------------------------------------------------------------------ config
def test_an_objective_no_workload_declares_is_refused_with_the_choices(tones):
    raw = tones_pipeline(tones, [{"kind": "pretrain", "data": "tones", "objective": "masked-audio",
                                  "model": {"preset": "bert-tiny"}}])
    with pytest.raises(ConfigError, match=r"stages\[0\].objective: .*'masked-audio' is no pretrain objective; the "
                                          r"recipe table has .*masked-spectrogram"):
        config.build(raw)
    raw["stages"][0].update(objective="masked-spectrogram", block_size=64)
    with pytest.raises(ConfigError, match="block_size: does not apply to audio"):
        config.build(raw)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tones_run(tones, tmp_path_factory) -> Path:
    """pretrain (masked-spectrogram) -> finetune (with control) -> distill -> export -> int8 on the tones."""
    model = {"preset": "bert-tiny", "overrides": {"patch_size": 8}}
    stages = [
        {"kind": "pretrain", "data": "tones", "objective": "masked-spectrogram", "model": model, "mlm_probability": 0.4,
         "train": TRAIN},
        {"kind": "finetune", "train": TRAIN, "control": {}, "gates": [{"metric": "accuracy", "min": 0.8}]},
        {"kind": "distill", "student": {"num_layers": 1}, "train": TRAIN},
        {"kind": "export", "gates": [{"metric": "argmax_agreement", "min": 1.0}]},
        {"kind": "quantize", "method": "dynamic-int8", "min_speedup": None},
        {"kind": "finetune", "name": "lora", "parent": "pretrain", "lora": {"r": 4, "alpha": 8}, "train": TRAIN},
    ]
    out = tmp_path_factory.mktemp("run")
    outcomes = pipeline.run(config.build(tones_pipeline(tones, stages)), workdir=out, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"] * 6, [(o.name, o.status) for o in outcomes]
    return out / "tones"


def test_pretraining_reconstructs_and_the_chain_passes_its_gates(tones_run):
    pre = metrics(tones_run, "pretrain")
    assert pre["reconstruction_loss"] < pre["reconstruction_loss_init"]
    assert {"probe_accuracy", "probe_accuracy_init", "probe_gain"} <= set(pre)
    fine = metrics(tones_run, "finetune")
    assert fine["accuracy"] >= 0.8 and {"control_accuracy", "pretraining_gain", "baseline_mfcc_accuracy"} <= set(fine)
    assert fine["pretraining_gain"] == pytest.approx(fine["accuracy"] - fine["control_accuracy"])
    lora = metrics(tones_run, "lora")  # adapters on the attention projections, merged into a plain AST
    assert lora["trainable_fraction"] < 0.5 and lora["lora_merge_max_abs_diff"] < 1e-4
    stats = json.loads((tones_run / "finetune" / "manifest.json").read_text())["details"]["data_stats"]
    # 48 clips, every fourth written at 16 kHz: the rates as read, before resampling to the model's 8 kHz
    assert stats["clips"] == 48 and stats["sample_rates"] == {"8000": 36, "16000": 12} and stats["seconds_min"] >= 0.3


def test_the_bundle_classifies_a_wav_file_with_onnxruntime_and_numpy(tones_run, tones):
    p = Predictor.open(tones_run / "quantize")
    assert p.inputs_kind == "audio" and p.route == "/classify_audio" and sorted(p.labels) == ["chirp", "high", "low"]
    wav = (tones / "high" / "high_1.wav").read_bytes()
    wave, rate = soundfile.read(tones / "high" / "high_1.wav", dtype="float32")
    answer = p.answer([wav, wave])  # the file, and its samples at the model's rate
    assert answer[0]["label"] == "high" and answer[0]["scores"] == pytest.approx(answer[1]["scores"], abs=1e-6)
    assert p.check() > 0  # the recorded sample predictions, replayed from their base64 WAVs


@pytest.mark.slow  # about 8 minutes on 2 cores: the FSDD pipeline, every gate from pre-training to HTTP
@pytest.mark.skipif(not (SPEECH / "fsdd").is_dir(), reason="needs ../shared/data/speech")
def test_the_speech_digits_pipeline_passes_every_gate(tmp_path):
    outcomes = pipeline.run(config.load(ROOT / "pipelines" / "speech_digits.yaml"), workdir=tmp_path, echo=quiet)
    assert all(o.status == "passed" for o in outcomes), [(o.name, o.status) for o in outcomes]
    assert metrics(tmp_path / "speech_digits", "quantize")["accuracy"] >= 0.95
