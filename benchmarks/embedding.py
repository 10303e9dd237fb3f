"""Int8 embedding model vs PyTorch fp32: cosine fidelity, kNN label accuracy, size, latency.

    flock /tmp/lifecycle-heavy.lock python benchmarks/embedding.py [--quick]   # ~15 minutes on 2 busy cores

Runs pipelines/minilm_embedding.yaml (all-MiniLM-L6-v2 adapted with unsupervised SimCSE on medical
abstracts -> ONNX with mean pooling and L2 normalisation in the graph -> dynamic int8, per-channel),
then, on the same adapted model: PyTorch fp32 eager (encoder + the same pooling), the ONNX fp32 export,
the pipeline's int8 and per-tensor int8 of the same export (the evidence behind the per-channel
default). Every model embeds the same test abstracts (cosine to PyTorch fp32, kNN label accuracy with
neighbours from the train split) and is timed on one abstract padded to 128 tokens at batch 1 and 32,
2 threads, in rounds that alternate between the models. Also reports kNN accuracy before and after
adaptation from the adapt stage. Writes benchmarks/results/embedding.json.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from common import ROOT, SHARED, SMOKE, Recorder, results_dir  # first: it sets the offline environment

# benchmarks/quantize.py: the same method, model length and threads
from quantize import SEQ, THREADS, latency_calls, run_pipeline, timed_rounds

from lifecycle import report

PIPELINE = ROOT / "pipelines" / "minilm_embedding.yaml"
TARGETS = {"cosine_mean": 0.99, "knn_drop_points": 1.0, "size_ratio": 0.30}
BUDGETS = {  # quick: fewer adaptation steps and kNN texts; full: the pipeline file as shipped
    "quick": {"overrides": ["stages.adapt.train.max_steps=20", "task.embedding.limit=600"], "runs": 10, "rounds": 3,
              "workdir": "/tmp/lifecycle-bench-embedding-quick"},
    "full": {"overrides": [], "runs": 20, "rounds": 4, "workdir": "/tmp/lifecycle-bench-embedding"},
    "smoke": {"overrides": ["data.medical.limit=300", "stages.adapt.train.max_steps=2", "stages.adapt.contrastive.eval_texts=16",
                            "task.embedding.limit=40", "stages.export.latency.runs=2", "stages.quantize.latency.runs=2"],
              "runs": 2, "rounds": 1, "workdir": None},  # every step once, in the smoke run's temporary folder
}


def measure_all(arts: dict, cfg, work: Path, budget: dict) -> dict:
    import torch
    from transformers import AutoModel

    from lifecycle import models
    from lifecycle.components.inference import embed_torch
    from lifecycle.components.quantization import Settings
    from lifecycle.components.quantization import build as quantize
    from lifecycle.data import load
    from lifecycle.edge import Predictor
    from lifecycle.embedding import embedding_model, fidelity, read_pooling, task_metrics

    adapted, export = arts["adapt"].path, arts["export"].path
    model = embedding_model(models.load_model(AutoModel, adapted), read_pooling(adapted)).eval()
    tokenizer = models.load_tokenizer(adapted, SEQ)
    per_tensor = work / "int8-per-tensor"
    quantize(Settings(method="dynamic-int8", per_channel=False), export, per_tensor)
    dirs = {"onnx_fp32": export, "onnx_int8_per_channel": arts["quantize"].path, "onnx_int8_per_tensor": per_tensor}
    torch.set_num_threads(THREADS)
    predictors = {name: Predictor.open(d, threads=THREADS) for name, d in dirs.items()}
    embedders = {"pytorch_fp32": functools.partial(embed_torch, model, tokenizer, max_length=SEQ),
                 **{name: p.embed for name, p in predictors.items()}}
    test = load(cfg.data[cfg.task.data], cfg).splits["test"]
    texts = list(test["text"])
    if cfg.task.embedding_settings.limit:
        texts = texts[: cfg.task.embedding_settings.limit]
    reference = embedders["pytorch_fp32"](texts)
    out = {}
    for name, embed in embedders.items():
        started = time.time()
        test_x = reference if name == "pytorch_fp32" else embed(texts)
        out[name] = {**task_metrics(embed, cfg, test_embeddings=test_x), **fidelity(reference, test_x),
                     "embed_seconds": time.time() - started}
    out["pytorch_fp32"]["size_mb"] = models.size_mb(adapted / "model.safetensors")
    for name, d in dirs.items():
        out[name]["size_mb"] = models.size_mb(d / "model.onnx")

    for batch in (1, 32):
        calls = latency_calls(model, tokenizer, predictors, texts[0], batch)
        runs = budget["runs"] if batch == 1 else max(3, budget["runs"] // 4)
        for name, lat in timed_rounds(calls, runs, budget["rounds"]).items():
            out[name].update({f"latency_b{batch}_{k}_ms": v for k, v in lat.items()})
    return out


def checks(m: dict) -> list[dict]:
    fp32, int8 = m["pytorch_fp32"], m["onnx_int8_per_channel"]
    rows = [
        ("int8 mean cosine to PyTorch fp32 (test abstracts)", int8["embedding_cosine_mean"], ">=", TARGETS["cosine_mean"]),
        ("|int8 kNN accuracy - PyTorch fp32 kNN accuracy| (points)",
         100 * abs(int8["knn_accuracy"] - fp32["knn_accuracy"]), "<=", TARGETS["knn_drop_points"]),
        ("int8 size / fp32 size", int8["size_mb"] / fp32["size_mb"], "<=", TARGETS["size_ratio"]),
    ]
    return [{"name": n, "value": v, "target": f"{op} {t:g}", "passed": bool(v >= t if op == ">=" else v <= t)}
            for n, v, op, t in rows]


def ratios(m: dict) -> dict:
    fp32, ort, int8 = m["pytorch_fp32"], m["onnx_fp32"], m["onnx_int8_per_channel"]
    return {f"int8_vs_{ref}_b{b}_p50": int8[f"latency_b{b}_p50_ms"] / r[f"latency_b{b}_p50_ms"]
            for ref, r in (("pytorch_fp32", fp32), ("onnx_fp32", ort)) for b in (1, 32)}


def table(m: dict) -> str:
    rows = [("model", "kNN acc", "cos mean", "cos min", "b1 p50 ms", "b1 p95 ms", "b32 p50 ms", "size MB")]
    for name, r in m.items():
        rows.append((name, f"{r['knn_accuracy']:.4f}", f"{r['embedding_cosine_mean']:.5f}",
                     f"{r['embedding_cosine_min']:.5f}", f"{r['latency_b1_p50_ms']:.2f}", f"{r['latency_b1_p95_ms']:.2f}",
                     f"{r['latency_b32_p50_ms']:.1f}", f"{r['size_mb']:.1f}"))
    return report.table(list(rows[0]), rows[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 adaptation steps, 600 kNN texts per split, fewer timed runs")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the medical abstracts live there)")
        return 0
    budget = BUDGETS["smoke" if SMOKE else "quick" if args.quick else "full"]
    workdir = args.workdir or (Path(budget["workdir"]) if budget["workdir"] else results_dir() / "work")
    recorder = Recorder("embedding", args.quick)
    arts, cfg = run_pipeline(budget, workdir, PIPELINE)
    found = measure_all(arts, cfg, workdir / "bench", budget)
    adapt = arts["adapt"].metrics
    results = {
        "models": found,
        "adaptation": {k: adapt.get(k) for k in ("knn_accuracy_before", "knn_accuracy", "knn_accuracy_gain",
                                                 "alignment_before", "alignment", "uniformity_before", "uniformity",
                                                 "train_loss", "eval_loss", "train_steps", "negatives_per_example",
                                                 "temperature", "knn_train_texts", "knn_test_texts")},
        "latency_ratios": ratios(found),
        "stage_metrics": {name: a.metrics for name, a in arts.items()},
        "stage_seconds": {name: a.manifest["timings"]["seconds"] for name, a in arts.items()},
        "graph_optimization": arts["export"].manifest["details"].get("graph_optimization"),
        "seq_len": SEQ, "threads": THREADS, "budget": budget, "run_dir": str(workdir / cfg.name),
    }
    found_checks = checks(found)
    path = recorder.save(results, found_checks)
    a = results["adaptation"]
    print("\n" + table(found))
    print(f"\nadaptation (SimCSE, {a['train_steps']} steps): kNN accuracy {a['knn_accuracy_before']:.4f} -> "
          f"{a['knn_accuracy']:.4f} ({100 * a['knn_accuracy_gain']:+.1f} points; {a['knn_test_texts']} test / "
          f"{a['knn_train_texts']} train abstracts)")
    print("latency ratios: " + ", ".join(f"{k} {v:.3g}" for k, v in results["latency_ratios"].items()))
    return recorder.report(found_checks, path)  # 1 when a check failed


if __name__ == "__main__":
    sys.exit(main())
