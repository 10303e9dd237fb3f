"""export stage: real torch.onnx / optimum exports of a tiny fine-tuned BERT, parity gate, fusions,
onnxruntime metrics, and interop with optimum's ORTModel.

The fine-tuned model is shared by every ONNX test file (test_export, test_quantize, test_edge,
test_bundle): they run the same pipeline into one session directory, so the finetune stage is
trained once and found in the cache afterwards.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from lifecycle import ConfigError, GateFailed, config, pipeline
from lifecycle.artifact import Artifact

DATA = Path(__file__).parent / "data" / "news_tiny.jsonl"
NAME = "onnx-tiny"
TINY = {
    "name": NAME,
    "seed": 0,
    "data": {"news": {"format": "jsonl", "path": str(DATA), "split": {"validation": 0.2, "test": 0.2}}},
    "task": {"data": "news", "max_length": 32},
    "stages": [
        {"kind": "finetune", "model": {"preset": "bert-tiny", "tokenizer": {"vocab_size": 1000}},
         "train": {"epochs": 10, "batch_size": 16, "lr": 3.0e-3, "logging_steps": 100}},
        {"kind": "export", "latency": {"runs": 5, "warmup": 1}},
    ],
}


def tiny_pipeline(*stages: dict, export: dict | None = None):
    raw = copy.deepcopy(TINY)
    raw["stages"][1].update(export or {})
    raw["stages"] += [copy.deepcopy(s) for s in stages]
    return config.build(raw, base_dir=Path(__file__).parent)


def run_tiny(workdir: Path, *stages: dict, export: dict | None = None) -> Path:
    """Run finetune -> export (-> stages) into workdir/onnx-tiny; returns the run directory.
    One torch thread: on a shared 2-core machine two threads wait on each other's barrier and
    training runs 2.5x slower (measured); latency figures are not asserted here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipeline.run(tiny_pipeline(*stages, export=export), workdir=workdir, echo=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return workdir / NAME


def shared_workdir(tmp_path_factory) -> Path:
    """One workdir for the session, so every ONNX test file finds the fine-tuned model cached."""
    return tmp_path_factory.getbasetemp() / "onnx-runs"


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory) -> Path:
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_run(onnx_workdir) -> Path:
    return run_tiny(onnx_workdir)


def op_types(model_path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(model_path)).graph.node}


def test_export_files_metrics_and_parity_gate(export_run):
    art = Artifact.load(export_run / "export")
    assert set(art.manifest["files"]) == {"model.onnx", "tokenizer.json", "labels.json", "schema.json", "config.json",
                                          "tokenizer_config.json", "special_tokens_map.json", "predictions/test.jsonl"}
    m = art.metrics
    assert m["parity_max_abs_diff"] < 1e-4 and m["argmax_agreement"] == 1.0
    for key in ("accuracy", "f1_macro", "ort_latency_p50_ms", "ort_latency_p99_ms", "ort_latency_b32_p50_ms", "size_mb"):
        assert m[key] > 0, key
    assert abs(m["accuracy"] - Artifact.load(export_run / "finetune").metrics["accuracy"]) <= 1 / 60
    gates = {g["metric"]: g for g in art.manifest["gates"]}
    assert gates["parity_max_abs_diff"]["passed"] and "0.0001" in gates["parity_max_abs_diff"]["bound"]
    schema = json.loads((art.path / "schema.json").read_text())
    assert set(schema["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert schema["max_length"] == 32 and schema["task"] == "classification"
    # fusions are measured and recorded; kept only when no slower
    opt = art.manifest["details"]["graph_optimization"]
    assert opt["fused_operators"].get("Attention") == 2
    assert ("Attention" in op_types(art.path / "model.onnx")) == opt["kept"]
    # kept unless the A/B's interval says the fused graph is slower (within parity, which holds here)
    ab = opt["fused_over_plain"]
    assert ab["interval"][0] <= ab["ratio"] <= ab["interval"][1] and ab["rounds"] >= 6
    assert opt["kept"] == (ab["verdict"] != "fail") and f"[{ab['interval'][0]:.3f}, {ab['interval'][1]:.3f}]" in opt["reason"]
    # the fused variant without SkipLayerNormalization runs only with the session setting that keeps it so
    unfused_norm = opt["variant"] == "fused_no_skip_layer_norm"
    assert ("session_config" in schema) == unfused_norm
    assert ("SkipLayerNormalization" in op_types(art.path / "model.onnx")) == (opt["variant"] == "fused")
    assert len(art.manifest["details"]["test_predictions"]) == 60


def test_a_fusion_left_out_stays_out_in_every_session(onnx_workdir, tmp_path, monkeypatch):
    """onnxruntime re-fuses Add + LayerNormalization into SkipLayerNormalization when a session starts;
    schema.json's session_config (written by the export, copied by quantize) keeps it from doing so."""
    import onnxruntime as ort

    from lifecycle.components.onnx import NO_SKIP_LAYER_NORM, copy_runtime_files, fuse, set_session_config
    from lifecycle.components.quantization import Settings, build
    from lifecycle.edge import Predictor

    plain = Artifact.load(run_tiny(onnx_workdir, export={"optimize": False}) / "export").path
    fused = tmp_path / "fused"
    fused.mkdir()
    copy_runtime_files(plain, fused)
    assert fuse(plain / "model.onnx", fused / "model.onnx", skip_layer_norm=False)["LayerNormalization"] > 0
    written = tmp_path / "session-graph.onnx"  # the graph each session runs, as onnxruntime optimized it

    class Options(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.optimized_model_filepath = str(written)

    monkeypatch.setattr(ort, "SessionOptions", Options)
    texts = ["markets rally as rates fall", "the team won the final"]
    Predictor.open(fused)
    assert "SkipLayerNormalization" in op_types(written)  # re-fused without the setting
    set_session_config(fused, NO_SKIP_LAYER_NORM)
    answers = Predictor.open(fused).logits(texts)
    assert "SkipLayerNormalization" not in op_types(written) and "LayerNormalization" in op_types(written)
    np.testing.assert_allclose(answers, Predictor.open(plain).logits(texts), atol=1e-4)
    build(Settings(method="dynamic-int8"), fused, tmp_path / "int8")  # a quantized child keeps the setting
    assert json.loads((tmp_path / "int8" / "schema.json").read_text())["session_config"] == NO_SKIP_LAYER_NORM
    Predictor.open(tmp_path / "int8")
    assert "SkipLayerNormalization" not in op_types(written)


def test_a_predictor_can_profile_its_graph(export_run, tmp_path):
    """Predictor.open(profile=...) turns on onnxruntime's profiler, written under the prefix given; without
    it nothing is profiled."""
    from lifecycle.edge import Predictor

    art = Artifact.load(export_run / "export")
    predictor = Predictor.open(art.path, threads=1, profile=str(tmp_path / "profile"))
    predictor.logits(["markets rally as rates fall"])
    written = Path(predictor.session.end_profiling())
    assert written.parent == tmp_path and written.name.startswith("profile")
    trace = json.loads(written.read_text())
    assert {e["args"]["op_name"] for e in trace if e.get("cat") == "Node"} & op_types(art.path / "model.onnx")
    assert Predictor.open(art.path, threads=1).session.end_profiling() == ""


def test_parity_gate_fails_the_stage(onnx_workdir):
    with pytest.raises(GateFailed, match="parity_max_abs_diff"):
        run_tiny(onnx_workdir, export={"parity_max": 1e-12})
    report = json.loads((onnx_workdir / NAME / "report.json").read_text())
    assert {s["name"]: s["status"] for s in report["stages"]}["export"] == "failed"


def test_optimize_off_keeps_the_plain_graph(onnx_workdir):
    run = run_tiny(onnx_workdir, export={"optimize": False})
    art = Artifact.load(run / "export")
    assert "graph_optimization" not in art.manifest["details"]
    assert "Attention" not in op_types(art.path / "model.onnx") and "MatMul" in op_types(art.path / "model.onnx")
    assert art.metrics["parity_max_abs_diff"] < 1e-4


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"stages\[1\]\.exporter"):
        tiny_pipeline(export={"exporter": "onnxscript"})
    # (perplexity is an export metric since generators are exported; adaptation's gain never is)
    with pytest.raises(ConfigError, match="cannot produce 'domain_perplexity_gain'"):
        tiny_pipeline(export={"gates": [{"metric": "domain_perplexity_gain", "min": 0}]})


def _optimum_logits(export_dir: Path, texts: list[str]) -> np.ndarray:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    model = ORTModelForSequenceClassification.from_pretrained(export_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(export_dir)
    enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="np")
    return model(**enc).logits


@pytest.mark.parametrize("exporter", ["torch", "optimum"])
def test_optimum_ortmodel_loads_the_export_and_agrees(onnx_workdir, exporter):
    """Interop: optimum's ORTModelForSequenceClassification opens our export directory (either
    exporter's graph) and predicts what lifecycle.edge predicts."""
    from lifecycle.edge import Predictor

    run = run_tiny(onnx_workdir, export={"exporter": exporter})
    art = Artifact.load(run / "export")
    assert art.metrics["parity_max_abs_diff"] < 1e-4
    texts = [p["text"] for p in art.manifest["details"]["sample_predictions"]]
    ours = Predictor.open(art.path).logits(texts)
    theirs = _optimum_logits(art.path, texts)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert [art.manifest["details"]["test_predictions"][i] for i in range(len(texts))] == list(theirs.argmax(-1))
