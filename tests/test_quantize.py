"""quantize stage: real onnxruntime quantization of the tiny export, the fallback ladder, exclusions,
and config checks. The finetune/export run is shared with test_export (same pipeline, cached)."""

from __future__ import annotations

import json

import pytest
from test_export import run_tiny, shared_workdir, tiny_pipeline

from lifecycle import ConfigError, GateFailed, LifecycleError
from lifecycle.artifact import Artifact
from lifecycle.edge import Predictor

FAST = {"runs": 3, "warmup": 1}  # latency is not what these tests check


def quantize(**fields) -> dict:
    """A quantize stage without the default speed gates (test_quantize_speed.py checks those): int8 of
    a tiny model is slower than fp32 on a CPU, and these tests check the other mechanics."""
    return {"kind": "quantize", "latency": FAST, "min_speedup": None, **fields}


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_art(onnx_workdir):
    return Artifact.load(run_tiny(onnx_workdir) / "export")


def test_dynamic_int8_is_the_default(onnx_workdir, export_art):
    run = run_tiny(onnx_workdir, quantize())
    art = Artifact.load(run / "quantize")
    m = art.metrics
    assert art.manifest["details"]["method"] == "dynamic-int8"
    assert [a["method"] for a in art.manifest["details"]["attempts"]] == ["dynamic-int8"]
    assert m["size_mb"] < 0.5 * export_art.metrics["size_mb"]
    assert m["argmax_agreement"] >= 0.9 and 0 < m["logit_max_abs_diff"] < 1.0
    for key in ("accuracy", "f1_macro", "ort_latency_p50_ms", "ort_latency_p95_ms", "ort_latency_p99_ms",
                "ort_latency_b32_p50_ms", "ort_latency_b32_p95_ms", "ort_latency_b32_p99_ms"):
        assert m[key] > 0, key
    assert set(art.manifest["files"]) == set(export_art.manifest["files"])  # model + the same runtime files
    assert json.loads((art.path / "schema.json").read_text())["weights"] == "dynamic-int8"
    ops = {n.op_type for n in __import__("onnx").load(str(art.path / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear"}
    # the artifact opens in the edge runtime and predicts what the manifest recorded
    p = Predictor.open(art.path)
    assert p.manifest is not None and p.check() == 8


def test_no_rung_passes_writes_the_last_and_fails_the_gate(onnx_workdir, export_art):
    stage = quantize(fallback=["fp16", "none"], gates=[{"metric": "accuracy", "min": 1.01}])
    with pytest.raises(GateFailed, match=r"\[quantize\] accuracy"):
        run_tiny(onnx_workdir, stage)
    art = Artifact.load(onnx_workdir / "onnx-tiny" / "quantize")
    attempts = art.manifest["details"]["attempts"]
    assert [(a["method"], a["passed"]) for a in attempts] == [("fp16", False), ("none", False)]
    assert attempts[0]["metrics"]["size_mb"] < 0.6 * export_art.metrics["size_mb"]  # fp16 halves the weights
    assert art.manifest["details"]["method"] == "none" and art.manifest["details"]["passed"] is False
    assert art.metrics["size_mb"] == pytest.approx(export_art.metrics["size_mb"])  # the last rung's model
    assert art.metrics["argmax_agreement"] == 1.0 and art.metrics["logit_max_abs_diff"] == 0.0
    assert not art.manifest["gates"][0]["passed"]


def test_ladder_falls_back_from_static_to_dynamic_int8(onnx_workdir, export_art):
    """static-int8 calibrated on a single text (its activation ranges then clip other inputs) misses a
    closeness-to-fp32 gate that dynamic int8 passes; the ladder falls back to dynamic int8 and the manifest
    records both attempts. Rungs are judged on validation; the test split is scored once, on the rung kept.

    The bar comes from the fp32 model, not from a rung: a tenth of the spread of its logits on a typical
    validation text (measured: spread ~3.6, dynamic int8 moves the logits by ~0.1 at most, one-text static
    int8 by ~1). Accuracy cannot separate the rungs on a 60-text split, where it is often equal."""
    import numpy as np

    from lifecycle import data as datalib

    p = tiny_pipeline()
    validation = list(datalib.load(p.data["news"], p).splits["validation"]["text"])
    logits = Predictor.open(export_art.path).logits(validation)
    bar = 0.1 * float(np.mean(logits.max(1) - logits.min(1)))
    ladder = {"fallback": ["static-int8", "dynamic-int8"], "calibration": {"samples": 1},
              "selective_fallback": {"trials": 0}}  # no rescue by exclusion: test_sensitivity checks that
    run = run_tiny(onnx_workdir, quantize(**ladder, gates=[{"metric": "logit_max_abs_diff", "max": bar}]))
    art = Artifact.load(run / "quantize")
    attempts = art.manifest["details"]["attempts"]
    assert [(a["method"], a["passed"]) for a in attempts] == [("static-int8", False), ("dynamic-int8", True)]
    static, dynamic = (a["metrics"]["logit_max_abs_diff"] for a in attempts)
    assert static > bar >= dynamic, (static, bar, dynamic)
    assert {a["split"] for a in attempts} == {"validation"}
    assert [m["metric"] for m in attempts[0]["misses"]] == ["logit_max_abs_diff"]
    assert art.manifest["details"]["method"] == "dynamic-int8" and art.manifest["details"]["passed"]
    assert art.metrics["logit_max_abs_diff"] <= bar  # and on test, where the stage's gate is judged
    assert art.metrics["val_accuracy"] == attempts[1]["metrics"]["accuracy"]
    assert art.metrics["ort_latency_p50_ms"] == attempts[1]["metrics"]["ort_latency_p50_ms"]  # timed once, with the rung
    assert json.loads((art.path / "schema.json").read_text())["weights"] == "dynamic-int8"


def test_exclusions_keep_ops_in_float(onnx_workdir):
    run = run_tiny(onnx_workdir, quantize(exclude_op_types=["Gather", "EmbedLayerNormalization"]))
    kept_embeddings = Artifact.load(run / "quantize").metrics["size_mb"]
    run = run_tiny(onnx_workdir, quantize())
    assert kept_embeddings > Artifact.load(run / "quantize").metrics["size_mb"] + 0.1  # embeddings stay fp32
    # excluding every op type is refused, not silently read by onnxruntime as "quantize everything"
    with pytest.raises(LifecycleError, match="excludes every op type"):
        run_tiny(onnx_workdir, quantize(exclude_op_types=["Conv", "MatMul", "Attention", "LSTM", "Gather",
                                                          "Transpose", "EmbedLayerNormalization"]))


def test_config_checks():
    with pytest.raises(ConfigError, match="whole ladder"):
        tiny_pipeline(quantize(method="dynamic-int8", fallback=["static-int8", "dynamic-int8"]))
    with pytest.raises(ConfigError, match="twice"):
        tiny_pipeline(quantize(fallback=["dynamic-int8", "dynamic-int8"]))
    with pytest.raises(ConfigError, match=r"stages\[2\]\.calibration\.split"):
        tiny_pipeline(quantize(calibration={"split": "test"}))
    with pytest.raises(ConfigError, match="cannot produce 'parity_max_abs_diff'"):
        tiny_pipeline(quantize(gates=[{"metric": "parity_max_abs_diff", "max": 1}]))
    p = tiny_pipeline(quantize(fallback=["static-int8", "dynamic-int8", "none"],
                               gates=[{"metric": "ort_latency_b32_p50_ms", "max_ratio": 0.9, "vs": "export"}]))
    assert p.stages[2].ladder == ["static-int8", "dynamic-int8", "none"]
    assert tiny_pipeline(quantize()).stages[2].ladder == ["dynamic-int8"]


def test_quieting_the_quantizers_drops_onnxruntime_records_only():
    """onnxruntime's quantizers warn through the root logger itself; while a rung is built those records
    are dropped, every other record still goes through, and the root logger is left as it was."""
    import logging

    from lifecycle.components.quantization import quiet_quantizers

    root = logging.getLogger()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, level = Keep(level=logging.DEBUG), root.level
    root.addHandler(handler)
    try:
        with quiet_quantizers():
            root.handle(logging.LogRecord("root", logging.WARNING, "/x/onnxruntime/quantization/onnx_quantizer.py",
                                          1, "untyped tensor", None, None))
            root.handle(logging.LogRecord("root", logging.ERROR, "/x/onnxruntime/quantization/onnx_quantizer.py",
                                          1, "a real error", None, None))
            logging.warning("the user's own warning")
            logging.getLogger("onnxruntime.quantization.shape_inference").warning("named onnxruntime noise")
            logging.getLogger("somebody.else").warning("another library's warning")
        logging.getLogger("onnxruntime.quantization.shape_inference").warning("after: onnxruntime warns again")
    finally:
        root.removeHandler(handler)
    assert seen == ["a real error", "the user's own warning", "another library's warning",
                    "after: onnxruntime warns again"]
    assert root.level == level and not root.filters


def test_static_int8_leaves_the_working_directory_alone(onnx_workdir, tmp_path, monkeypatch):
    """quant_pre_process may dump files into its working directory: it runs in a child process in the
    stage's scratch directory, so this process's directory neither changes nor gains files."""
    import os

    monkeypatch.chdir(tmp_path)
    run = run_tiny(onnx_workdir, quantize(method="static-int8", calibration={"samples": 4}))
    assert os.getcwd() == str(tmp_path) and list(tmp_path.iterdir()) == []
    art = Artifact.load(run / "quantize")
    assert [a["method"] for a in art.manifest["details"]["attempts"]] == ["static-int8"]
    assert "error" not in art.manifest["details"]["attempts"][0]
    ops = {n.op_type for n in __import__("onnx").load(str(art.path / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops  # a QDQ graph: calibrated static int8


def test_int4_weight_only_rung(onnx_workdir, export_art):
    """Block-wise int4 MatMul weights (MatMulNBits) with int8 for what it cannot take: smaller than dynamic
    int8 of the same export, its accuracy and fidelity reported, and gated like any rung."""
    import onnx

    run = run_tiny(onnx_workdir, quantize())
    int8_size = Artifact.load(run / "quantize").metrics["size_mb"]
    run = run_tiny(onnx_workdir, quantize(fallback=[{"method": "int4", "block_size": 32, "accuracy_level": 4}],
                                          gates=[{"metric": "size_mb", "max_ratio": 0.5, "vs": "export"},
                                                 {"metric": "argmax_agreement", "min": 0.5}]))
    art = Artifact.load(run / "quantize")
    assert art.manifest["details"]["method"] == "int4" and art.manifest["details"]["passed"]
    assert art.metrics["size_mb"] < int8_size < export_art.metrics["size_mb"]
    # both scored on the test split: accuracy can move only where the answers moved
    assert abs(art.metrics["accuracy"] - export_art.metrics["accuracy"]) <= 1 - art.metrics["argmax_agreement"] + 1e-9
    nodes = [n for n in onnx.load(str(art.path / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert nodes, "int4 MatMul weights"
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    schema = json.loads((art.path / "schema.json").read_text())
    assert schema["weights"] == "int4" and schema["int8"]["reduce_range"] is False
    assert Predictor.open(art.path).check() == 8


def test_int4_takes_the_embedding_tables_of_an_unfused_graph(export_art, tmp_path):
    """On the plain graph, the vocabulary (half of a small BERT's weights) goes 4-bit too
    (GatherBlockQuantized) instead of staying float; the graph still runs and answers like fp32 on the 60
    test texts: the same answer for 9 in 10 (the barely trained model's top two logits are often ~0.3
    apart; measured 0.95), its logits moved by under 5% of their typical size (measured 2%)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from lifecycle import models
    from lifecycle.components import onnx as onnx_export
    from lifecycle.components.quantization import Settings, blockwise
    from lifecycle.workloads.text import classification

    finetune = export_art.path.parent / "finetune"
    model = classification.TASK.torch_model(finetune)
    tokenizer = models.load_tokenizer(finetune, 32)
    plain, quantized = tmp_path / "plain.onnx", tmp_path / "int4.onnx"
    onnx_export.export_torch(model, tokenizer, plain, opset=17)
    blockwise(Settings(method="int4"), plain, quantized)

    graph = onnx.load(str(quantized)).graph
    assert {"MatMulNBits", "GatherBlockQuantized"} <= {n.op_type for n in graph.node}
    vocab = tuple(model.get_input_embeddings().weight.shape)
    floats = [t.name for t in graph.initializer if tuple(t.dims) == vocab and t.data_type == onnx.TensorProto.FLOAT]
    assert not floats, "the vocabulary stayed float"
    from lifecycle import data as datalib

    p = tiny_pipeline()
    texts = list(datalib.load(p.data["news"], p).splits["test"]["text"])
    feeds = dict(tokenizer(texts, return_tensors="np", padding="max_length", max_length=32, truncation=True))
    outputs = {}
    for path in (plain, quantized):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        outputs[path] = session.run(None, {k: v.astype(np.int64) for k, v in feeds.items() if k in names})[0]
    assert np.isfinite(outputs[quantized]).all() and outputs[quantized].shape == outputs[plain].shape
    fp32, q4 = outputs[plain], outputs[quantized]
    assert np.mean(q4.argmax(1) == fp32.argmax(1)) >= 0.9
    assert np.abs(q4 - fp32).mean() < 0.05 * np.abs(fp32).mean(), (np.abs(q4 - fp32).mean(), np.abs(fp32).mean())
