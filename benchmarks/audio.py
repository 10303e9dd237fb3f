"""Audio models: what inference costs as clips grow, and what pre-training, adaptation, synthetic speech and
new speakers do to accuracy. Needs ../shared/data/speech.

    flock /tmp/lifecycle-heavy.lock python benchmarks/audio.py latency    # a few minutes on 2 cores
    flock /tmp/lifecycle-heavy.lock python benchmarks/audio.py training   # about 25 minutes

`latency` (benchmarks/results/audio_latency.json, audio_latency.png): the served architecture of
pipelines/speech_digits.yaml (2 layers, hidden 64, 8x8 patches over 64 mel bins at 8 kHz) with random
weights, built for clips of 0.5 to 10 s (frames = the clip's, so the token count grows with the length),
exported and quantized by the library's own code; PyTorch eager, onnxruntime fp32 and dynamic int8 at batch
1 and 16, timed interleaved in one process, and the log-mel features (numpy) per clip beside them. Inputs
are real FSDD recordings joined end to end to the length. Check: int8 >= 2x eager at the pipeline's 1.3 s
(the image benchmark's target), or the measured reason why not.

`training` (benchmarks/results/audio.json): speech_digits.yaml's recipe, seeds and budgets, fixed before the
recorded run, through the library's stages:
  - objective: its masked-spectrogram pre-training against the same model from random init on FSDD's
    official split (the finetune stage's control): `pretraining_gain`, whatever its sign;
  - adaptation: pre-training, then `adapt` on real_unlabeled/ (129 phrases of real/'s speakers), then the
    same fine-tuning: real/ accuracy (23 digit clips) with and without, each with its bootstrap interval;
  - synthetic speech: the same model fine-tuned on synth/train (espeak-ng) only, scored on FSDD's test
    takes and on real/: the cost of training on synthetic voices;
  - new speakers: FSDD with two speakers (george, lucas) held out entirely (test = all their clips; the
    other four speakers' takes 0-4 validation), the model against MFCCs + logistic regression on the same
    split, with a paired bootstrap interval of the difference. Check: the model >= the MFCC baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, SHARED, Recorder  # first: it sets the offline environment

SPEECH = SHARED / "speech"
RATE, MEL_BINS, PATCH, LAYERS = 8000, 64, 8, 2
SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
QUICK_SECONDS = (0.5, 1.3, 5.0)
PIPELINE_SECONDS = 1.3  # 64 frames of 20 ms, task.max_length of speech_digits.yaml
TARGET_INT8_VS_EAGER = 2.0
HELD_OUT = ["george", "lucas"]


def frames_for(seconds: float) -> int:
    return 1 + (int(seconds * RATE) - 400) // 160


def recordings(seconds: float, count: int) -> list:
    """`count` clips of `seconds` each: FSDD recordings joined end to end (and cut)."""
    import numpy as np
    import soundfile

    files = sorted((SPEECH / "fsdd" / "recordings").glob("*.wav"))
    waves, pos = [], 0
    for _ in range(count):
        parts, have = [], 0
        while have < seconds * RATE:
            wave, _ = soundfile.read(files[pos % len(files)], dtype="float32")
            parts.append(wave)
            have, pos = have + len(wave), pos + 1
        waves.append(np.concatenate(parts)[: int(seconds * RATE)])
    return waves


def build(seconds: float, work: Path):
    """(torch model, fp32 directory, int8 directory, clips as WAV bytes) for one clip length."""
    import json

    import torch
    from transformers import ASTForAudioClassification

    from lifecycle.components.quantization import Settings
    from lifecycle.components.quantization import build as quantize
    from lifecycle.edge import AudioPreprocessing, wav_bytes
    from lifecycle.models import ModelSource
    from lifecycle.workloads.audio.model import ast_config, export_onnx, head
    from lifecycle.workloads.audio.task import TASK

    waves = recordings(seconds, 16)
    pre = AudioPreprocessing.fit(waves, RATE, MEL_BINS, frames_for(seconds))
    source = ModelSource(preset="bert-tiny", overrides={"num_hidden_layers": LAYERS, "patch_size": PATCH})
    torch.manual_seed(0)
    model = ASTForAudioClassification(ast_config(pre, source, **head([str(i) for i in range(10)]))).eval()
    src, fp32, int8 = work / f"model-{seconds}", work / f"fp32-{seconds}", work / f"int8-{seconds}"
    fp32.mkdir(parents=True)
    model.save_pretrained(src)
    (src / "preprocessor_config.json").write_text(json.dumps(pre))
    preprocessor = TASK.preprocessor(src, None)
    export_onnx(model, preprocessor.transform([preprocessor.blank()] * 2), fp32 / "model.onnx")
    TASK.write_runtime_files(fp32, src, preprocessor, None, ["input_values"], model)
    quantize(Settings(method="dynamic-int8"), fp32, int8)
    return model, fp32, int8, [wav_bytes(w, RATE) for w in waves]


def measure_length(seconds: float, work: Path, runs: int) -> dict:
    import numpy as np
    import torch

    from lifecycle.edge import Predictor
    from lifecycle.evaluation.latency import interleaved

    model, fp32, int8, clips = build(seconds, work)
    sessions = {name: Predictor.open(root, threads=2) for name, root in (("fp32", fp32), ("int8", int8))}
    out = {"seconds": seconds, "frames": frames_for(seconds), "tokens": model.config.num_mel_bins // PATCH
           * (frames_for(seconds) // PATCH) + 2}
    for batch in (1, 16):
        feeds = sessions["fp32"].encode(clips[:batch])
        x = torch.as_tensor(feeds["input_values"])
        with torch.inference_mode():
            times = interleaved({
                "features": lambda b=batch: sessions["fp32"].encode(clips[:b]),
                "eager": lambda x=x: model(input_values=x),
                "ort_fp32": lambda f=feeds: sessions["fp32"].session.run(None, f),
                "ort_int8": lambda f=feeds: sessions["int8"].session.run(None, f)}, rounds=4, warmup=3,
                runs=runs if batch == 1 else max(3, runs // 4))
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        # ratios from the same interleaved series: the median of per-round ratios would need paired calls;
        # the medians of interleaved series share every round's load
        out[f"b{batch}"] = {**{f"{k}_ms": v for k, v in p50.items()}, "int8_vs_eager": p50["eager"] / p50["ort_int8"],
                            "fp32_vs_eager": p50["eager"] / p50["ort_fp32"],
                            "int8_vs_fp32": p50["ort_fp32"] / p50["ort_int8"]}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, batch in zip(axes, ("b1", "b16")):
        for key, label in (("eager_ms", "PyTorch eager"), ("ort_fp32_ms", "ONNX fp32"), ("ort_int8_ms", "ONNX int8"),
                           ("features_ms", "log-mel features (numpy)")):
            ax.plot([r["seconds"] for r in rows], [r[batch][key] for r in rows], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="clip length (s)", ylabel="p50 latency (ms)", title=f"batch {batch[1:]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def latency(quick: bool) -> int:
    recorder = Recorder("audio_latency", quick)
    lengths, runs = (QUICK_SECONDS, 10) if quick else ((*SECONDS[:2], PIPELINE_SECONDS, *SECONDS[2:]), 30)
    lengths = tuple(sorted(set(lengths) | {PIPELINE_SECONDS}))
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-audio-") as tmp:
        rows = [measure_length(s, Path(tmp), runs) for s in lengths]
    at = next(r for r in rows if r["seconds"] == PIPELINE_SECONDS)
    ratio = at["b1"]["int8_vs_eager"]
    found = [{"name": f"ONNX int8 vs PyTorch eager at {PIPELINE_SECONDS} s, batch 1 (x)", "value": ratio,
              "target": f">= {TARGET_INT8_VS_EAGER}", "passed": ratio >= TARGET_INT8_VS_EAGER}]
    why = (f"at {PIPELINE_SECONDS} s: ONNX fp32 {at['b1']['fp32_vs_eager']:.2f}x eager, int8 {at['b1']['int8_vs_fp32']:.2f}x "
           f"fp32 at batch 1 ({at['b16']['int8_vs_fp32']:.2f}x at batch 16); the features take "
           f"{at['b1']['features_ms']:.2f} ms of the {at['b1']['features_ms'] + at['b1']['ort_int8_ms']:.2f} ms an int8 "
           "answer costs")
    path = recorder.save({"rows": rows, "note": why}, found)
    plot(rows, path.with_name("audio_latency.png"))
    from lifecycle.report import table

    print(table(["seconds", "tokens", *(f"b{b} {k}" for b in (1, 16) for k in ("features", "eager", "fp32", "int8"))],
                [[r["seconds"], r["tokens"], *(f"{r[b][k]:.3f}" for b in ("b1", "b16")
                                               for k in ("features_ms", "eager_ms", "ort_fp32_ms", "ort_int8_ms"))]
                 for r in rows]))
    return recorder.report(found, path, why)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["latency", "training"])
    ap.add_argument("--quick", action="store_true", help="fewer lengths and runs (latency), smaller budgets (training)")
    args = ap.parse_args()
    if not (SPEECH / "fsdd").is_dir():
        raise SystemExit(f"needs {SPEECH} (../shared/data/speech)")
    return latency(args.quick) if args.part == "latency" else training(args.quick)


if __name__ == "__main__":
    sys.exit(main())
