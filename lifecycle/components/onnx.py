"""ONNX: the torch, optimum and onnxruntime-genai exporters, onnxruntime's transformer fusions (kept only when measured
no slower), the runtime files beside model.onnx, parity with PyTorch, and how every onnx-model stage
is timed in onnxruntime (latency settings included). Shared by export and quantize, for every task
(what the graph outputs and how it is scored is the task's: lifecycle.tasks)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import Field

from lifecycle import quiet
from lifecycle.evaluation.latency import Latency, latency_metrics

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
# everything beside model.onnx (preprocessing.json: a table model's, lifecycle.edge.TablePreprocessing;
# preprocessor_config.json: an image model's, lifecycle.edge.ImagePreprocessing)
RUNTIME_FILES = ("labels.json", "schema.json", "preprocessing.json", "preprocessor_config.json", *TOKENIZER_FILES)
ONNX_METRICS = (*latency_metrics("ort"), *latency_metrics("ort", "b32_"), "size_mb")  # the task adds its scores
# transformers model_type -> onnxruntime optimizer model_type (its BERT pass covers the encoder family)
FUSION_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
                "gpt2": "gpt2"}


class OnnxLatency(Latency):
    """Latency in onnxruntime: `batch_size` (default 1) gives ort_latency_p50_ms..., and batch 32 gives
    ort_latency_b32_*, both padded to `seq_len` (default: the task's max_length)."""

    batch32: bool = True  # also measure at batch 32; costs about 30x one batch-1 run per timed run
    threads: int | None = Field(None, gt=0, description="onnxruntime intra-op threads; None: one per core")


# ------------------------------------------------------------------------------------------ exporters
def export_torch(model, tokenizer, path: Path, opset: int, output: str = "logits") -> None:
    import torch

    sample = tokenizer(["export sample"] * 2, return_tensors="pt", padding="max_length", max_length=16)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with torch.inference_mode(), quiet.onnx_export():
        torch.onnx.export(model, tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=[output], dynamic_axes={**axes, output: {0: "batch"}},
                          opset_version=opset, dynamo=False)


def export_optimum(src: Path, path: Path, opset: int, task: str) -> None:
    """optimum's exporter on the parent directory. Its own validation is off: our parity check is the
    gate, on real validation texts rather than random ids."""
    from optimum.exporters.onnx import main_export

    out = path.parent / "optimum"
    with quiet.onnx_export():  # optimum traces with torch.onnx too: the same harmless tracer messages
        main_export(str(src), output=out, task=task, opset=opset, library_name="transformers",
                    do_validation=False, local_files_only=True)
    shutil.move(out / "model.onnx", path)


def export_genai(model, tokenizer, path: Path) -> dict[str, int]:
    """onnxruntime-genai's model builder (fp32, CPU) on the model as loaded, in its own process as its users
    run it, offline; returns the graph's operator counts. The builder writes its own fused decoder
    (GroupQueryAttention with the KV cache, SkipSimplifiedLayerNormalization, rotary embeddings inside the
    attention), which decodes several times faster than the optimum export on a CPU (benchmarks/generation.py),
    with the same inputs and outputs: input_ids, attention_mask, past_key_values.N.key/value -> logits,
    present.N.key/value. The weights it keeps outside the graph are folded back into one file, and the cache
    inputs' head dimension (symbolic in its graph) is fixed, so lifecycle.edge runs it like any decoder."""
    import subprocess
    import sys
    import tempfile
    from collections import Counter

    import onnx

    from lifecycle import LifecycleError

    try:
        import onnxruntime_genai  # noqa: F401 -- the builder ships inside it
    except ImportError:
        raise LifecycleError("export: `exporter: genai` needs onnxruntime-genai: pip install 'lifecycle[genai]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "model", Path(tmp) / "built"
        model.save_pretrained(src, safe_serialization=True)
        tokenizer.save_pretrained(src)
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p", "fp32",
               "-e", "cpu", "-c", str(Path(tmp) / "cache"), "--extra_options", "hf_token=false"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            unsupported = "is not currently supported" in done.stderr
            raise LifecycleError(
                f"export: onnxruntime-genai's model builder cannot build {model.config.architectures[0]}"
                + (" (it builds the Llama family: Llama, Mistral, Qwen, Phi, Gemma...); use `exporter: torch`"
                   if unsupported else f": {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"))
        graph = onnx.load(str(out / "model.onnx"))  # its external weights, into the graph
    head = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    for value in (*graph.graph.input, *graph.graph.output):
        if "past_key_values" in value.name or value.name.startswith("present"):
            value.type.tensor_type.shape.dim[3].dim_value = head
    onnx.save(graph, str(path))
    return dict(Counter(n.op_type for n in graph.graph.node).most_common())


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


# ------------------------------------------------------------------------------------ graph fusions
# onnxruntime's SkipLayerNormalization (residual Add + LayerNormalization in one CPU kernel) can be slower
# than the two ops it replaces: on MiniLM at 128 tokens the fused graph without it was the fastest of the
# three (benchmarks/results/quantize.json: graph_optimization). So both fused graphs are timed. The python
# pass can leave it out, but the session re-fuses it at start unless told not to, so the variant without it
# carries that instruction in schema.json (`session_config`, applied by lifecycle.edge.Predictor).
NO_SKIP_LAYER_NORM = {"optimization.disable_specified_optimizers": "SkipLayerNormFusion"}


def fuse(plain: Path, out: Path, model_type: str = "bert", skip_layer_norm: bool = True) -> dict[str, int]:
    """onnxruntime's transformer fusions (Python pass only, portable); returns the fused-operator counts.
    `skip_layer_norm=False` leaves residual Add + LayerNormalization unfused (see NO_SKIP_LAYER_NORM)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = skip_layer_norm
    opt = optimize_model(str(plain), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                         optimization_options=options)
    opt.save_model_to_file(str(out))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def maybe_fused(plain: Path, runtime_dir: Path, work_dir: Path, model, tokenizer, texts, latency: OnnxLatency,
                max_length: int, parity_max: float, reference=None) -> tuple[Path, dict]:
    """Fuse (with and without SkipLayerNormalization), time the plain graph and both fused ones in
    alternating rounds, then the faster fused graph against the plain one in an A/B with a 95% interval
    (lifecycle.evaluation.latency.ab_ratio) at batch 1. The fused graph is kept unless the interval says it
    is slower, and only within the parity bound: within noise of the plain graph it stays, since its
    Attention is what dynamic int8 turns into QAttention. Returns the graph to keep and what was found (the
    manifest's `graph_optimization`). `runtime_dir` holds the runtime files; its schema.json gets the kept
    graph's `session_config`. The fused graphs are built under `work_dir`."""
    import numpy as np

    from lifecycle.edge import Predictor
    from lifecycle.evaluation.latency import ab_ratio, interleaved

    model_type = FUSION_TYPES.get(model.config.model_type)
    if model_type is None:
        return plain, {"kept": False, "reason": f"onnxruntime has no fusions for model type '{model.config.model_type}'"}
    copy_runtime_files(runtime_dir, plain.parent)
    dirs, ops = {"plain": plain.parent}, {}
    for name, skip in (("fused", True), ("fused_no_skip_layer_norm", False)):
        dirs[name] = work_dir / name
        dirs[name].mkdir(exist_ok=True)
        copy_runtime_files(runtime_dir, dirs[name])
        ops[name] = fuse(plain, dirs[name] / "model.onnx", model_type, skip_layer_norm=skip)
    set_session_config(dirs["fused_no_skip_layer_norm"], NO_SKIP_LAYER_NORM)
    seq, runs = latency.seq_len or max_length, max(latency.runs // 3, 3)
    calls = {}
    for name, root in dirs.items():
        p = Predictor.open(root, threads=latency.threads)
        feeds = p.encode([texts[0]] * latency.batch_size, pad_to=seq)
        calls[name] = lambda p=p, feeds=feeds: p.session.run(None, feeds)
    times = interleaved(calls, rounds=3, warmup=latency.warmup, runs=runs)
    timings = {name: float(np.median(t)) for name, t in times.items()}
    best = min(("fused", "fused_no_skip_layer_norm"), key=timings.__getitem__)
    ab = ab_ratio(calls[best], calls["plain"], 1.0, "max_ratio", rounds=6, max_rounds=12, calls=runs, warmup=1)
    fused_parity = parity(model, tokenizer, Predictor.open(dirs[best]), texts, max_length, reference)
    within = fused_parity["parity_max_abs_diff"] <= parity_max
    keep = bool(ops[best]) and ab["verdict"] != "fail" and within
    lo, hi = ab["interval"]
    speed = {"pass": "faster than", "fail": "slower than", "inconclusive": "within noise of"}[ab["verdict"]]
    found = {
        "fused_operators": ops[best], "variant": best if keep else "plain",
        "ort_latency_p50_ms_plain": timings["plain"], "ort_latency_p50_ms_fused": timings["fused"],
        "ort_latency_p50_ms_fused_no_skip_layer_norm": timings["fused_no_skip_layer_norm"],
        "fused_over_plain": {k: ab[k] for k in ("ratio", "interval", "verdict", "rounds", "calls_per_round")},
        "parity_max_abs_diff_fused": fused_parity["parity_max_abs_diff"], "kept": keep,
        "reason": "no fusion applied" if not ops[best] else (
            f"fused graph {'kept' if keep else 'not kept'}: {speed} the plain graph at batch "
            f"{latency.batch_size} (time ratio {ab['ratio']:.3f}, 95% interval [{lo:.3f}, {hi:.3f}])"
            + ("" if within else ", outside the parity bound")),
    }
    set_session_config(runtime_dir, NO_SKIP_LAYER_NORM if found["variant"] == "fused_no_skip_layer_norm" else {})
    return (dirs[best] / "model.onnx" if keep else plain), found


def set_session_config(model_dir: Path, entries: dict[str, str]) -> None:
    """schema.json's `session_config`: onnxruntime session settings lifecycle.edge applies (none: removed)."""
    path = Path(model_dir) / "schema.json"
    schema = {k: v for k, v in json.loads(path.read_text()).items() if k != "session_config"}
    path.write_text(json.dumps({**schema, **({"session_config": entries} if entries else {})}, indent=2))


# ------------------------------------------------------------------------------ files and metrics
def runtime_files(root: Path) -> set[str]:
    """Everything an onnx-model directory holds beside the graph: the files every model may have, and the
    preprocessor file its schema.json names (a plug-in inputs kind's own, say)."""
    import json

    from lifecycle.edge import SCHEMA, required_files

    schema = Path(root) / SCHEMA
    named = required_files(json.loads(schema.read_text())) if schema.is_file() else ()
    return {*RUNTIME_FILES, *(n for n in named if n != "model.onnx")}


def copy_runtime_files(src: Path, dst: Path) -> None:
    """The runtime files that src has, into dst."""
    for name in sorted(runtime_files(src)):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def write_runtime_files(out: Path, src: Path, tokenizer, max_length: int, input_names: list[str], graph: dict,
                        labels: list[str]) -> None:
    """tokenizer.json, labels.json and schema.json beside model.onnx: what lifecycle.edge needs. `graph`:
    what the task says about the output (lifecycle.tasks: outputs, task, method, route...). config.json
    and the tokenizer files are kept too, so optimum's ORTModel can load the directory."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    (out / "labels.json").write_text(json.dumps(labels))  # [] for a task without labels: one bundle format
    schema = {
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "sequence"]} for n in input_names},
        "max_length": max_length,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        **graph,
    }
    (out / "schema.json").write_text(json.dumps(schema, indent=2))


def parity(model, tokenizer, predictor, texts: list[str], max_length: int, reference=None, argmax: bool = True,
           outputs=None, difference=None) -> dict:
    """Max |output difference| and (with `argmax`) argmax agreement, PyTorch vs onnxruntime, at batch 1
    and the largest batch, on the shortest and the longest texts. `reference(model, tokenizer, texts,
    batch_size=)` computes PyTorch's outputs (default: a classifier's logits at `max_length`), `outputs(predictor,
    texts, batch_size)` the runtime's (default: its logits) and `difference(reference, outputs)` how far apart
    they are (default: max_abs_diff)."""
    from functools import partial

    import numpy as np

    from lifecycle.components.inference import predict_logits

    reference = reference or partial(predict_logits, max_length=max_length)
    outputs = outputs or (lambda p, batch, batch_size: p.logits(batch, batch_size=batch_size))
    difference = difference or max_abs_diff

    by_len = sorted(texts, key=len)
    cases = [[by_len[0]], [by_len[-1]], by_len]  # batch 1 short, batch 1 long, whole batch (mixed lengths)
    diffs, agree, total = [], 0, 0
    for batch in cases:
        ref = reference(model, tokenizer, batch, batch_size=len(batch))
        got = outputs(predictor, batch, len(batch))
        diffs.append(difference(ref, got))
        agree += argmax_agreeing(ref, got) if argmax else 0
        total += len(batch)
    found = {"parity_max_abs_diff": float(np.max(diffs))}  # np.max keeps a NaN
    return {**found, "argmax_agreement": agree / total} if argmax else found


def max_abs_diff(a, b) -> float:
    """max |a - b|, or NaN when either side holds a NaN or an infinity, so a broken model fails its
    parity gate: NaN - NaN is NaN, but Python's max(0.0, nan) is 0.0 and inf - inf is NaN too."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return float(np.abs(a - b).max()) if a.size else 0.0


def argmax_agreeing(a, b) -> int:
    """Rows whose argmax agrees; a row with a non-finite value disagrees (argmax of all-NaN rows is 0
    on both sides, which would count as agreement)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    finite = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    return int(((a.argmax(-1) == b.argmax(-1)) & finite).sum())


def onnx_latency(predictor, text: str, latency: OnnxLatency, max_length: int) -> dict:
    """Latency at batch `latency.batch_size` (ort_latency_p50_ms...) and batch 32 (ort_latency_b32_*), one text
    padded to seq_len, in onnxruntime; and size_mb. Shared by every onnx-model stage and task."""
    from lifecycle.evaluation.latency import measure

    metrics = {}
    seq = latency.seq_len or max_length
    feeds = predictor.encode([text] * latency.batch_size, pad_to=seq)
    metrics.update(measure(lambda: predictor.session.run(None, feeds), latency.warmup, latency.runs, runtime="ort"))
    if latency.batch32:
        feeds32 = predictor.encode([text] * 32, pad_to=seq)
        b32 = measure(lambda: predictor.session.run(None, feeds32), min(latency.warmup, 2), latency.runs, runtime="ort")
        metrics.update({k.replace("latency_", "latency_b32_"): v for k, v in b32.items()})  # ort_latency_b32_p50_ms
    metrics.update(latency_batch_size=latency.batch_size, latency_seq_len=seq,
                   latency_threads=latency.threads or os.cpu_count(), size_mb=model_size_mb(predictor.root))
    return metrics


def model_size_mb(root: Path) -> float:
    """model.onnx plus any external-data files it uses (everything but the runtime files)."""
    skip = {*runtime_files(root), "manifest.json"}
    return sum(f.stat().st_size for f in Path(root).iterdir() if f.is_file() and f.name not in skip) / 1e6
