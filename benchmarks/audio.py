"""Audio models: what inference costs as clips grow, and what pre-training, adaptation, synthetic speech and
new speakers do to accuracy. Needs ../shared/data/speech.

    flock /tmp/lifecycle-heavy.lock python benchmarks/audio.py latency    # a few minutes on 2 cores
    flock /tmp/lifecycle-heavy.lock python benchmarks/audio.py training   # about 25 minutes

`latency` (benchmarks/results/audio_latency.json, audio_latency.png): the served architecture of
pipelines/speech_digits.yaml (3 layers, hidden 64, 8x8 patches every 4 of 12 mel bins and every 4 frames,
8 kHz) with random
weights, built for clips of 0.5 to 10 s (frames = the clip's, so the token count grows with the length, as
a model without `audio.stretch_frames` reads them; the pipeline's model stretches every clip to 64 frames,
so its model cost is the 1.3 s row's at any length and only the features grow),
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
  - synthetic speech: the same model fine-tuned on synth/train (espeak-ng) only, scored on every FSDD
    recording (all 3,000: none was trained on; `fsdd_official_test` in the result) and on real/: the cost of
    training on synthetic voices;
  - new speakers: FSDD with two speakers (george, lucas) held out entirely (test = all their clips; the
    other four speakers' takes 0-4 validation), the model against MFCCs + logistic regression on the same
    split, with a paired bootstrap interval of the difference. Check: the model >= the MFCC baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, SHARED, SMOKE, Recorder, check  # first: it sets the offline environment

SPEECH = SHARED / "speech"
RATE, MEL_BINS, PATCH, TIME_STRIDE, FREQUENCY_STRIDE, LAYERS = 8000, 12, 8, 4, 4, 3
SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
QUICK_SECONDS = (0.5, 1.3, 5.0)
PIPELINE_SECONDS = 1.3  # 64 frames of 20 ms, task.max_length of speech_digits.yaml
TARGET_INT8_VS_EAGER = 2.0
HELD_OUT = ["george", "lucas"]
DEVIATIONS = ("2026-12-07: the first recorded run stopped at its last variant: the held-out-speakers finetune scored "
             "accuracy 0.418 on george's and lucas's clips and failed the gate the variants inherited from "
             "speech_digits.yaml (accuracy >= 0.95); nothing else of it was seen. The variants now run without the "
             "pipeline's gates (and its collapse gate); recipe, budgets, seeds and checks unchanged.",
             "2026-12-07, after the recorded run: new speakers scored 0.418 against the MFCC baseline's 0.611 "
             "(difference -0.193 [-0.232, -0.155], check failed; pretraining_gain +0.063, real/ 0.478 without "
             "adapt, 0.565 with). The recipe of speech_digits.yaml then changed from 32 mel bins padded to 64 frames "
             "to 12 mel bins (frequency stride 4) with every clip stretched to 64 frames (audio.stretch_frames), "
             "chosen on FSDD speakers theo and jackson held out in turn (trained on three of the other four; george "
             "and lucas never read), where it came within a few points of MFCCs on both folds and the recorded recipe "
             "stayed about 20 points under (an exploration outside the repository, so no figure of it is quoted). "
             "Tried there and not kept: per-utterance mean / variance normalisation, SpecAugment masks, frequency "
             "warping with time stretching and gain, fewer epochs, more dropout, synthetic speech added to "
             "fine-tuning, cepstral liftering. Budgets, seeds, held-out pair and checks unchanged.")


LATENCY_DEVIATION = ("2026-12-07, after the run recorded at 2f231b8 (int8 2.264x eager, passed; int8 0.61x the "
                     "fp32 graph at batch 1): the check is vacuous unless int8 is faster than the fp32 graph it "
                     "replaces (the evidence issue's rule); measurement unchanged.")


def frames_for(seconds: float) -> int:
    return 1 - (-(int(seconds * RATE) - 400) // 160)  # frames that cover the clip (1.3 s: the pipeline's 64)


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
    source = ModelSource(preset="bert-tiny", overrides={"num_hidden_layers": LAYERS, "patch_size": PATCH,
                                                        "time_stride": TIME_STRIDE,
                                                        "frequency_stride": FREQUENCY_STRIDE})
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
    from lifecycle.workloads.audio.masked import patch_count

    out = {"seconds": seconds, "frames": frames_for(seconds), "tokens": patch_count(model.config) + 2}
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
    lengths, runs = ((PIPELINE_SECONDS,), 2) if SMOKE else (lengths, runs)
    lengths = tuple(sorted(set(lengths) | {PIPELINE_SECONDS}))
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-audio-") as tmp:
        rows = [measure_length(s, Path(tmp), runs) for s in lengths]
    at = next(r for r in rows if r["seconds"] == PIPELINE_SECONDS)
    ratio = at["b1"]["int8_vs_eager"]
    # int8 replaces the fp32 graph, not eager: a speedup over eager that the fp32 graph alone beats proves nothing
    found = [check(f"ONNX int8 vs PyTorch eager at {PIPELINE_SECONDS} s, batch 1 (x)", ratio,
                   f">= {TARGET_INT8_VS_EAGER}, int8 faster than the fp32 graph", ratio >= TARGET_INT8_VS_EAGER,
                   premise=at["b1"]["int8_vs_fp32"] > 1)]
    why = (f"at {PIPELINE_SECONDS} s: ONNX fp32 {at['b1']['fp32_vs_eager']:.2f}x eager, int8 {at['b1']['int8_vs_fp32']:.2f}x "
           f"fp32 at batch 1 ({at['b16']['int8_vs_fp32']:.2f}x at batch 16); the features take "
           f"{at['b1']['features_ms']:.2f} ms of the {at['b1']['features_ms'] + at['b1']['ort_int8_ms']:.2f} ms an int8 "
           "answer costs")
    path = recorder.save({"rows": rows, "note": why, "deviations": [LATENCY_DEVIATION]}, found)
    plot(rows, path.with_name("audio_latency.png"))
    from lifecycle.report import table

    print(table(["seconds", "tokens", *(f"b{b} {k}" for b in (1, 16) for k in ("features", "eager", "fp32", "int8"))],
                [[r["seconds"], r["tokens"], *(f"{r[b][k]:.3f}" for b in ("b1", "b16")
                                               for k in ("features_ms", "eager_ms", "ort_fp32_ms", "ort_int8_ms"))]
                 for r in rows]))
    return recorder.report(found, path, why)


# ------------------------------------------------------------------------------------------ training
def speech_pipeline() -> dict:
    import yaml

    raw = yaml.safe_load((ROOT / "pipelines" / "speech_digits.yaml").read_text())
    speech = "../../shared/data/speech"  # as the pipeline file says, resolved from a pipeline beside it
    raw["data"].update(
        real_unlabeled={"format": "audiofolder", "path": f"{speech}/real_unlabeled/train", "label_field": None,
                        "split": {"validation": 0.1, "test": 0.0}, "audio": {"sampling_rate": RATE}},
        fsdd_test={**raw["data"]["fsdd"], "audio": {**raw["data"]["fsdd"]["audio"], "test_where": None,
                                                    "validation_where": None, "also_test": [], "test_only": True}},
        synth_train={"format": "audiofolder", "path": f"{speech}/synth/train", "audio": {"sampling_rate": RATE,
                     "also_test": ["fsdd_test", "real"]}, "labels": list(DIGITS),
                     "split": {"validation": 0.1, "test": 0.1}})
    return raw


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def run_variant(raw: dict, name: str, stages: list[str], work: Path, quick: bool, **changes) -> Path:
    """speech_digits.yaml's stages `stages` (by kind, with `changes` per kind) as pipeline `name`; its run folder."""
    import copy

    from lifecycle import config, pipeline

    raw = copy.deepcopy(raw)
    chosen = []
    for kind in stages:
        stage = next((dict(s) for s in raw["stages"] if s["kind"] == kind), {"kind": kind})
        stage.update(changes.get(kind, {}), gates=[])  # measured, not gated: a variant may score under the pipeline's bars
        if kind in ("finetune", "distill"):
            stage["collapse_min"] = None
        if quick:
            stage["train"] = {**stage.get("train", {}), "epochs": 2}
        chosen.append(stage)
    raw.update(name=name, stages=chosen, **changes.get("pipeline", {}))
    import yaml

    path = variant_file(name)  # in pipelines/, so the data paths resolve as in the pipeline file
    path.write_text(yaml.safe_dump(raw))
    try:
        pipeline.run(config.load(path), workdir=work, echo=lambda *a, **k: None)
    finally:
        path.unlink()
    return work / name


def variant_file(name: str) -> Path:
    return ROOT / "pipelines" / f".bench-audio-{name}.yaml"


def manifest(run: Path, stage: str) -> dict:
    import json

    return json.loads((run / stage / "manifest.json").read_text())


def paired(correct_a: list, correct_b: list, seed: int = 0) -> dict:
    """b - a on the same clips: accuracy difference with its paired bootstrap interval."""
    from lifecycle.evaluation.stats import accuracy, paired_bootstrap

    truth = [1] * len(correct_a)
    b = paired_bootstrap(accuracy, truth, correct_a, correct_b, seed=seed)
    return {"difference": b.delta, "ci_low": b.low, "ci_high": b.high, "p_value": b.p_value, "clips": len(truth)}


def training(quick: bool) -> int:
    recorder = Recorder("audio", quick)
    raw = speech_pipeline()
    adapt = {"kind": "adapt", "data": "real_unlabeled", "objective": "masked-spectrogram", "mlm_probability": 0.4,
             "train": {"epochs": 20, "batch_size": 32, "lr": 5.0e-4, "warmup_ratio": 0.05, "logging_steps": 50}}
    held_out = {"test_where": {"speaker": HELD_OUT}, "validation_where": {"take": [0, 1, 2, 3, 4]}}
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-audio-"))
    # official and adapted share a name, so adapted reuses official's pre-trained model (the same stage, cached)
    official = run_variant(raw, "fsdd", ["pretrain", "finetune"], work, quick)
    base, pretrained = manifest(official, "finetune"), manifest(official, "pretrain")
    adapted = run_variant(raw, "fsdd", ["pretrain", "adapt", "finetune"], work, quick,
                          adapt={**adapt, "parent": "pretrain"})
    adapt_fine, adapt_stage = manifest(adapted, "finetune"), manifest(adapted, "adapt")
    synth_fine = manifest(run_variant(raw, "synthetic", ["pretrain", "finetune"], work, quick, finetune={"control": None},
                                      pipeline={"task": {**raw["task"], "data": "synth_train"}}), "finetune")
    speakers_raw = {**raw, "data": {**raw["data"], "fsdd": {**raw["data"]["fsdd"], "audio": {
        **raw["data"]["fsdd"]["audio"], **held_out}}}}
    speak = manifest(run_variant(speakers_raw, "speakers", ["pretrain", "finetune"], work, quick,
                                 finetune={"control": None}), "finetune")

    def real(m: dict) -> dict:
        found = m["details"]["also_test"]["real"]
        return {k: v for k, v in found.items() if k != "correct"}

    import numpy as np

    from lifecycle import config, data

    p = config.build({**speakers_raw, "name": "speakers"}, base_dir=ROOT / "pipelines")
    speaker_truth = data.load(p.data["fsdd"], p).target("test")
    model_right = (np.array(speak["details"]["test_predictions"]) == speaker_truth).astype(int).tolist()
    mfcc_right = (np.array(speak["details"]["baseline_mfcc_test_predictions"]) == speaker_truth).astype(int).tolist()
    new_speakers = {"held_out": HELD_OUT, "accuracy": speak["metrics"]["accuracy"],
                    "baseline_mfcc_accuracy": speak["metrics"]["baseline_mfcc_accuracy"],
                    "model_minus_mfcc": paired(mfcc_right, model_right), "real": real(speak)}
    adaptation = {"real_without_adapt": real(base), "real_with_adapt": real(adapt_fine),
                  "real_with_minus_without": paired(base["details"]["also_test"]["real"]["correct"],
                                                    adapt_fine["details"]["also_test"]["real"]["correct"]),
                  "adapt_metrics": adapt_stage["metrics"],
                  "adapt_reconstruction_on_also_test": adapt_stage["details"]["also_test"]}
    synthetic_only = {"fsdd_official_test": {k: v for k, v in synth_fine["details"]["also_test"]["fsdd_test"].items()
                                             if k != "correct"},
                      "real": real(synth_fine), "synth_validation_accuracy": synth_fine["metrics"]["val_accuracy"]}
    objective = {k: base["metrics"][k] for k in ("accuracy", "control_accuracy", "pretraining_gain",
                                                 "baseline_mfcc_accuracy", "val_accuracy")}
    objective["pretrain"] = pretrained["metrics"]
    diff = new_speakers["model_minus_mfcc"]
    found = [
        check("new speakers: model accuracy - MFCC baseline, same held-out clips (paired)", diff["difference"], ">= 0",
              diff["difference"] >= 0, premise=new_speakers["baseline_mfcc_accuracy"] > 0.1),
        check("masked-spectrogram pre-training vs the same model from random init (pretraining_gain)",
              objective["pretraining_gain"], "> 0", objective["pretraining_gain"] > 0,
              premise=objective["accuracy"] > 0.1)]  # a collapsed fine-tune compares nothing
    results = {"objective": objective, "adaptation": adaptation, "synthetic_only": synthetic_only,
               "new_speakers": new_speakers, "recipe": "pipelines/speech_digits.yaml (budgets, seeds as recorded there)",
               "deviations": list(DEVIATIONS)}
    path = recorder.save(results, found)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return recorder.report(found, path)


# ------------------------------------------------------------------------------------------ pipeline
def whole_pipeline(quick: bool) -> int:
    """pipelines/speech_digits.yaml as written, timed: every gate, the int8 accuracy on FSDD's official test
    takes, the other test sets with their intervals (benchmarks/results/audio_pipeline.json)."""
    import json
    import time

    from lifecycle import GateFailed, config, pipeline

    recorder = Recorder("audio_pipeline", quick)
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-audio-"))
    started = time.time()
    try:
        pipeline.run(config.load(ROOT / "pipelines" / "speech_digits.yaml"), workdir=work, echo=lambda *a, **k: None)
    except GateFailed:
        pass  # recorded below: the report says which gate
    seconds = time.time() - started
    run = work / "speech_digits"
    report = json.loads((run / "report.json").read_text())
    served = int8_also_test(run / "quantize") if (run / "quantize" / "manifest.json").is_file() else {}
    stages = {}
    for stage in report["stages"]:
        found = manifest(run, stage["name"]) if (run / stage["name"] / "manifest.json").is_file() else {}
        stages[stage["name"]] = {"status": stage["status"], "metrics": found.get("metrics", {}),
                                 "also_test": {k: {m: v for m, v in scores.items() if m != "correct"}
                                               for k, scores in found.get("details", {}).get("also_test", {}).items()}}
    int8 = stages["quantize"]["metrics"].get("accuracy", float("nan"))
    found = [check("every gate of speech_digits.yaml passes", float(report["passed"]), "1", bool(report["passed"])),
             check("wall time of the whole pipeline (s)", seconds, "<= 600", seconds <= 600),
             check("int8 accuracy on FSDD's official test takes", int8, ">= 0.95", int8 >= 0.95)]
    path = recorder.save({"seconds": seconds, "stages": stages, "int8_also_test": served}, found)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return recorder.report(found, path)


def int8_also_test(model: Path) -> dict:
    """The int8 model (onnxruntime, from WAV files as a client sends them) on every `audio.also_test` source of
    the pipeline's task, each with its bootstrap interval (lifecycle.workloads.audio.evaluation)."""
    from lifecycle import config, data
    from lifecycle.edge import Predictor
    from lifecycle.workloads.audio.evaluation import scored_set
    from lifecycle.workloads.audio.task import TASK

    p = config.load(ROOT / "pipelines" / "speech_digits.yaml")
    predictor = Predictor.open(model)
    out = {}
    for name in p.data[p.task.data].audio.also_test:
        other = data.load(p.data[name], p)
        found = scored_set(predictor.logits(TASK.inputs(other.splits["test"])).argmax(-1), other, predictor.labels, p.seed)
        out[name] = {k: v for k, v in found.items() if k != "correct"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["pipeline", "latency", "training"])
    ap.add_argument("--quick", action="store_true", help="fewer lengths and runs (latency), smaller budgets (training)")
    args = ap.parse_args()
    if not (SPEECH / "fsdd").is_dir():
        raise SystemExit(f"needs {SPEECH} (../shared/data/speech)")
    return {"pipeline": whole_pipeline, "latency": latency, "training": training}[args.part](args.quick)


if __name__ == "__main__":
    sys.exit(main())
