"""Per-node sensitivity and greedy selective fallback for static int8, on a graph with one node made
sensitive on purpose; keep-best reporting when the trial budget runs out.

The tiny classifier's export is edited so that fp32 answers are unchanged but the input of the
classifier's Gemm carries an outlier channel: Add(pooled, 1000 * e_j) in front of it, and the Gemm's
bias minus 1000 * W[:, j] behind it. Static int8 then gives that input one per-tensor scale stretched
by the outlier, every real activation rounds to zero and the logits are lost; leaving the Gemm and the
Add that writes the tensor (onnxruntime's QDQ quantizer quantizes its output) in float restores them.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_export import NAME, run_tiny, shared_workdir, tiny_pipeline

from lifecycle import GateFailed, pipeline
from lifecycle.artifact import Artifact, hash_tree, update_manifest
from lifecycle.components.sensitivity import relative_error, schedule
from lifecycle.edge import Predictor

OUTLIER = 1000.0


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


def make_sensitive(model_path) -> str:
    """Edit the graph as the module docstring says; returns the Gemm's node name."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    out = graph.output[0].name
    gemm = next(n for n in graph.node if n.op_type == "Gemm" and out in n.output)
    inits = {i.name: i for i in graph.initializer}
    w = numpy_helper.to_array(inits[gemm.input[1]])
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    column = w[:, 0] if trans_b else w[0, :]  # what input channel 0 adds to each logit
    c = numpy_helper.to_array(inits[gemm.input[2]])
    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array((c - OUTLIER * column).astype(np.float32), gemm.input[2]))
    width = w.shape[1] if trans_b else w.shape[0]
    offset = np.zeros(width, dtype=np.float32)
    offset[0] = OUTLIER
    graph.initializer.append(numpy_helper.from_array(offset, "outlier_offset"))
    graph.node.insert(list(graph.node).index(gemm), helper.make_node(
        "Add", [gemm.input[0], "outlier_offset"], ["outlier_input"], name="outlier_add"))
    gemm.input[0] = "outlier_input"
    onnx.save(model, str(model_path))
    return gemm.name


@pytest.fixture(scope="module")
def sensitive_run(onnx_workdir, tmp_path_factory):
    """A private copy of the tiny finetune -> export run whose export holds the sensitive graph."""
    run = run_tiny(onnx_workdir)
    workdir = tmp_path_factory.mktemp("sensitive")
    shutil.copytree(run, workdir / NAME)
    export = Artifact.load(workdir / NAME / "export")
    before = Predictor.open(export.path).logits(["a test sentence about markets", "the match ended"])
    gemm = make_sensitive(export.path / "model.onnx")
    update_manifest(export, files=hash_tree(export.path))
    after = Predictor.open(export.path).logits(["a test sentence about markets", "the match ended"])
    assert np.abs(before - after).max() < 1e-2, "precondition: the edit must not change fp32 answers"
    return workdir, gemm


@pytest.fixture(scope="module")
def bar(sensitive_run):
    """The argmax_agreement bar, from the fp32 model: halfway between what a constant answer reaches (the
    share of fp32's most frequent answer on validation, where rungs are judged) and fp32 itself (1.0). The
    outlier takes every real activation of the Gemm's input to zero, so the whole static graph answers
    about one class; healthy static int8 of this model agrees ~0.98 (measured)."""
    from lifecycle import data as datalib

    workdir, _ = sensitive_run
    p = tiny_pipeline()
    validation = list(datalib.load(p.data["news"], p).splits["validation"]["text"])
    answers = Predictor.open(workdir / NAME / "export").logits(validation).argmax(1)
    return (np.bincount(answers).max() / len(answers) + 1.0) / 2


def quantize_sensitive(workdir, agreement: float = 0.95, **fields):
    stage = {"kind": "quantize", "latency": {"runs": 3, "warmup": 1}, "min_speedup": None,
             "method": "static-int8", "calibration": {"samples": 16},
             "gates": [{"metric": "argmax_agreement", "min": agreement}], **fields}
    return pipeline.run(tiny_pipeline(stage), workdir=workdir, echo=lambda *a, **k: None)


def test_the_sensitive_node_ranks_first_and_excluding_it_fixes_static_int8(sensitive_run, bar):
    """The outlier drops the whole static graph below the bar (see `bar`); excluding the two nodes the
    ranking puts first lifts it back above."""
    workdir, gemm = sensitive_run
    quantize_sensitive(workdir, agreement=bar, selective_fallback={"trials": 3, "top": 5})
    art = Artifact.load(workdir / NAME / "quantize")
    attempt = art.manifest["details"]["attempts"][0]
    sel = attempt["selective_fallback"]
    # the outlier tensor charges its producer (the Add, whose output the quantizer quantizes) and its
    # consumer (the Gemm): both rank first, a typical element lost; every other node quantizes fine
    top = {r["node"] for r in sel["ranking"][:2]}
    assert top == {gemm, "outlier_add"} and all(r["error"] > 0.5 for r in sel["ranking"][:2])
    assert all(r["error"] < 0.2 for r in sel["ranking"][2:])
    assert attempt["whole_graph"]["metrics"]["argmax_agreement"] < bar
    assert sel["steps"][-1]["passed"] and set(sel["steps"][-1]["excluded"]) == top and len(sel["steps"]) <= 2
    assert set(sel["kept"]) == top and attempt["excluded_nodes"] == sel["kept"] and attempt["passed"]
    # the whole static graph missed the gate that the graph without the node passes
    assert [m["metric"] for m in attempt["whole_graph"]["misses"]] == ["argmax_agreement"]
    assert art.metrics["val_argmax_agreement"] >= bar
    import onnx

    graph = onnx.load(str(art.path / "model.onnx")).graph
    assert "QuantizeLinear" in {n.op_type for n in graph.node}  # still static int8 elsewhere
    gemm_inputs = next(n for n in graph.node if n.name == gemm).input
    assert "outlier_input" in gemm_inputs  # reads the float tensor, no QDQ in front of it
    report = (workdir / NAME / "report.md").read_text()
    assert "Per-node sensitivity of static-int8" in report and f"| {gemm} | Gemm |" in report


def test_the_search_stops_once_the_scores_pass_even_when_another_gate_misses(sensitive_run, bar):
    """Leaving more nodes in float cannot shrink the graph: with a size gate no static graph meets, the
    search ends at the first trial whose scores pass, records the nodes that fixed them, and the stage
    keeps the closest candidate."""
    workdir, gemm = sensitive_run
    with pytest.raises(GateFailed):
        quantize_sensitive(workdir, selective_fallback={"trials": 4},
                           gates=[{"metric": "argmax_agreement", "min": bar}, {"metric": "size_mb", "max": 1e-3}])
    attempt = Artifact.load(workdir / NAME / "quantize").manifest["details"]["attempts"][0]
    sel = attempt["selective_fallback"]
    last = sel["steps"][-1]
    assert last["scores_passed"] and not last["passed"] and not any(s["scores_passed"] for s in sel["steps"][:-1])
    assert len(sel["steps"]) <= 2  # the budget allowed 4 trials
    assert sel["kept"] is None and sel["scores_fixed_by"] == last["excluded"] and gemm in last["excluded"]
    assert [g["metric"] for g in last["gates"] if g["verdict"] == "fail"] == ["size_mb"] and not attempt["passed"]
    assert sel["table"][-1].endswith("passes the gates on scores, misses size_mb")


def test_keep_best_names_the_closest_candidate_when_the_budget_runs_out(sensitive_run):
    """No trial budget and an impossible bar: neither rung passes, so the closer one (the smaller
    shortfall; on a tie the later rung, the ladder's fallback) is written and named, with each gate's
    shortfall. (Dynamic int8 quantizes activations per tensor too, so the outlier hurts it as well.)"""
    workdir, _ = sensitive_run
    with pytest.raises(GateFailed):
        quantize_sensitive(workdir, agreement=1.01, method=None, fallback=["static-int8", "dynamic-int8"],
                           selective_fallback={"trials": 0})
    details = Artifact.load(workdir / NAME / "quantize").manifest["details"]
    static, dynamic = details["attempts"]
    assert not static["passed"] and not dynamic["passed"]
    closest = static if static["metrics"]["argmax_agreement"] > dynamic["metrics"]["argmax_agreement"] else dynamic
    assert details["closest"]["rung"] == closest["rung"] == details["rung"]
    [miss] = details["closest"]["misses"]
    assert miss["metric"] == "argmax_agreement"
    assert miss["missed_by"] == pytest.approx(1.01 - closest["metrics"]["argmax_agreement"])
    assert details["reason"].startswith(f"no rung passes every gate; the closest is {closest['rung']}: argmax_agreement")


def test_relative_error_sees_what_sqnr_hides():
    """An outlier channel stretching the scale: SQNR still reads high, the typical-element error ~1."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    x[:, 0] = OUTLIER
    scale = (x.max() - x.min()) / 255
    q = np.round(x / scale) * scale
    assert compute_signal_to_quantization_noice_ratio([x], [q]) > 25
    assert relative_error([x], [q]) > 0.5
    healthy = rng.normal(size=(64, 32)).astype(np.float32)
    s = (healthy.max() - healthy.min()) / 255
    assert relative_error([healthy], [np.round(healthy / s) * s]) < 0.05


def test_schedule_doubles_within_the_budget():
    assert schedule(100, 4) == [1, 2, 4, 8]
    assert schedule(3, 4) == [1, 2, 3]
    assert schedule(0, 4) == []
    assert schedule(5, 0) == []
