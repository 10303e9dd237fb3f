"""Per-node sensitivity of a static int8 graph, and the greedy selective fallback that leaves the worst
nodes in float until the accuracy gates pass.

Measured with onnxruntime's quantization debugging tools (onnxruntime.quantization.qdq_loss_debug):
both graphs are augmented to output every float tensor, run on the same calibration inputs, and each
quantized tensor is compared before and after its QuantizeLinear/DequantizeLinear pair (the error
quantizing it adds, where it happens) and with the fp32 graph's tensor (the error accumulated so far,
as SQNR in dB). A node's sensitivity is the worst error on the quantized activations it reads or
writes: a bad tensor charges its producer and its consumers, which greedy exclusion then leaves in float.

Why not SQNR for the ranking: SQNR is a norm ratio, so one outlier channel dominates both norms, and a
tensor whose other channels were all rounded to zero (the classic transformer failure: an outlier
dimension stretching the one per-tensor activation scale) still reads ~40 dB. The ranking therefore uses
median |x - q(x)| / median |x|: what quantization does to a typical element, which is ~1.0 for such a
tensor and a few percent for a healthy one. Both figures go into the attribution table.

Intel Neural Compressor's ONNX accuracy-aware tuning (fall back op types, then single ops) does the
same job; it was not measured here: it is not installed in this offline environment and is a heavy
dependency (its own TensorFlow/PyTorch adaptors) for one search loop that onnxruntime's own tooling and
our validation gates already give us.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import Field

from lifecycle.schema import Strict


class SelectiveFallback(Strict):
    """static-int8 only, when its rung misses a gate on a score: rank nodes by quantization error and
    rebuild without the worst ones (1, 2, 4, ... nodes) until the gates pass or `trials` run out."""

    trials: int = Field(4, ge=0)  # 0: off; each trial re-quantizes and scores validation (~1 rung's cost)
    samples: int = Field(16, gt=0)  # calibration texts the node errors are measured on (memory grows with it)
    top: int = Field(10, gt=0)  # nodes listed in the attribution table


def relative_error(x, y) -> float:
    """median |x - y| / median |x| over all elements of the tensors (lists of arrays, one per input)."""
    a = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in x])
    b = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in y])
    scale = float(np.median(np.abs(a)))
    err = float(np.median(np.abs(a - b)))
    return 0.0 if err == 0 else err / max(scale, 1e-12)


def node_errors(pre: Path, qdq: Path, feeds: list[dict], work: Path) -> list[dict]:
    """One row per quantized node of `qdq` (the QDQ static int8 of the float graph `pre`), worst first:
    the node, its op type, its worst quantized input, that input's relative error and its SQNR (dB)
    against the fp32 graph."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    work.mkdir(parents=True, exist_ok=True)
    acts = {}
    for name, model in (("float", pre), ("qdq", qdq)):
        augmented = work / f"{name}-augmented.onnx"
        modify_model_output_intermediate_tensors(str(model), str(augmented))
        acts[name] = collect_activations(str(augmented), list(feeds))
        augmented.unlink()
    matched = {t: m for t, m in create_activation_matching(acts["qdq"], acts["float"]).items() if m.get("float")}
    errors = {t: e["qdq_err"] for t, e in compute_activation_error(matched, relative_error).items()}
    sqnr = {t: e["xmodel_err"] for t, e in compute_activation_error(matched).items()}
    # Weights are not ranked: create_weight_matching dequantized the token-type embedding table of a
    # working tiny BERT to -12 dB SQNR (it reads a DequantizeLinear without an `axis` attribute as axis
    # -1, where ONNX's default is 1), which would put a harmless node first. Their SQNR is kept for the
    # table as `weight_sqnr_db` where it can be computed.
    weight_sqnr = {w: compute_signal_to_quantization_noice_ratio(m["float"], m["dequantized"])
                   for w, m in create_weight_matching(str(pre), str(qdq)).items()}

    graph = onnx.load(str(qdq), load_external_data=False).graph
    # A tensor's quantizer is owned by its consumers and by its producer: onnxruntime's QDQ quantizer
    # quantizes an op's output too (an Add before a Gemm), and leaving only the consumer in float still
    # feeds it the dequantized tensor. So a node is charged with the error on its inputs and its outputs.
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    quantized = {n.name for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                 and (any(i in dq_outputs for i in n.input) or any(o in q_inputs for o in n.output))}
    rows = []
    for node in onnx.load(str(pre), load_external_data=False).graph.node:
        if node.name not in quantized:
            continue
        inputs = [i for i in (*node.input, *node.output) if i in errors]
        if not inputs:
            continue
        worst = max(inputs, key=lambda i: errors[i])
        weights = [weight_sqnr[i] for i in node.input if i in weight_sqnr]
        rows.append({"node": node.name, "op_type": node.op_type, "input": worst, "error": float(errors[worst]),
                     "sqnr_db": float(sqnr.get(worst, float("nan"))),
                     "weight_sqnr_db": float(min(weights)) if weights else None})
    return sorted(rows, key=lambda r: -r["error"])


def schedule(candidates: int, trials: int) -> list[int]:
    """How many of the worst nodes each trial leaves in float: 1, 2, 4, ... (a trial costs a rebuild and a
    validation pass; a doubling prefix reaches many nodes in few trials), at most `candidates`."""
    out, k = [], 1
    while candidates and len(out) < trials and (not out or out[-1] < candidates):
        out.append(min(k, candidates))
        k *= 2
    return out


def greedy(ranking: list[dict], trial: Callable[[list[str]], dict], trials: int) -> list[dict]:
    """Exclude the worst-ranked nodes, more each trial (`schedule`), until `trial(excluded)` reports
    {"scores_passed": True, ...}: once the gates on scores pass, more nodes in float can only cost size
    and speed, so a trial that then misses another gate ends the search too. Returns every step with
    what it excluded."""
    nodes = [r["node"] for r in ranking]
    steps = []
    for k in schedule(len(nodes), trials):
        step = {"excluded": nodes[:k], **trial(nodes[:k])}
        steps.append(step)
        if step["scores_passed"]:
            break
    return steps


def attribution_lines(ranking: list[dict], steps: list[dict], score: str, top: int) -> list[str]:
    """The attribution table as text lines: top nodes by error, then what each trial excluded and the
    validation score after it."""
    lines = ["| node | op | input | median rel. error | SQNR vs fp32 (dB) |", "|---|---|---|---|---|"]
    lines += [f"| {r['node']} | {r['op_type']} | {r['input']} | {r['error']:.3g} | {r['sqnr_db']:.1f} |"
              for r in ranking[:top]]
    for i, s in enumerate(steps, 1):
        value = s.get("metrics", {}).get(score)
        shown = "-" if value is None else f"{value:.4f}"
        if s["passed"]:
            verdict = "passes the gates"
        elif s["scores_passed"]:
            missed = [g["metric"] for g in s["gates"] if g["verdict"] == "fail" and g["on_fail"] == "stop"]
            verdict = f"passes the gates on scores, misses {', '.join(missed)}"
        else:
            verdict = "misses the gates on scores"
        lines.append(f"trial {i}: {len(s['excluded'])} node(s) in float (last: {s['excluded'][-1]}): "
                     f"validation {score} {shown}, {verdict}")
    return lines
