"""The `serve` stage in a pipeline: finetune -> export -> serve on the tiny data, a real `bentoml serve`
subprocess, the test split sent over HTTP from concurrent clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lifecycle import ConfigError, config, pipeline
from lifecycle.artifact import Artifact

TINY = Path(__file__).parent / "pipelines" / "tiny.yaml"
SERVE = {"kind": "serve", "clients": 4, "serving": {"max_concurrency": 8}}
# Adaptive batching: requests from 8 clients are run together; answers must not mix up, nor move (the
# predictor batches only equal-length texts, so no text is padded for another).
SERVE_BATCHED = {"kind": "serve", "name": "serve-batched", "parent": "export", "clients": 8,
                 "serving": {"batching": True, "max_batch_size": 8, "max_latency_ms": 5000}}


def tiny_with(stages: list[dict]) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    for item in ("stages.finetune.gates=[]", "stages.finetune.collapse_min=null",  # 1 epoch: one class, by design
                 "stages.finetune.train.epochs=1", "stages.export.gates=[]"):
        config.apply_override(raw, item)
    raw["stages"] += stages
    return raw


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # Same workdir and pipeline name as tests/test_serving.py: finetune and export are cached between them.
    pipe = config.build(tiny_with([SERVE, SERVE_BATCHED]), base_dir=TINY.parent)
    outcomes = pipeline.run(pipe, workdir=tmp_path_factory.getbasetemp() / "serving-runs", echo=lambda *_: None)
    return {o.name: o for o in outcomes}


def test_http_accuracy_equals_the_export_accuracy(run):
    served, export = run["serve"].artifact, run["export"].artifact
    assert run["serve"].status == "passed"
    assert served.kind == "service-check"
    assert served.metrics["http_accuracy"] == export.metrics["accuracy"]  # one inference path, exactly
    assert served.metrics["error_count"] == 0
    p50, p95, p99 = (served.metrics[f"http_latency_{p}_ms"] for p in ("p50", "p95", "p99"))
    assert 0 < p50 <= p95 <= p99
    assert served.metrics["requests_per_s"] > 0
    assert {g.metric for g in run["serve"].gates} == {"accuracy", "error_count", "prediction_mismatches"}
    assert served.metrics["prediction_mismatches"] == 0 and served.metrics["score_max_abs_diff"] < 1e-5
    assert all(g.passed for g in run["serve"].gates)


def test_batched_serving_gives_each_request_its_own_answers(run):
    batched, export = run["serve-batched"].artifact, run["export"].artifact
    assert run["serve-batched"].status == "passed"
    assert batched.metrics["http_accuracy"] == export.metrics["accuracy"]
    assert batched.metrics["f1_macro"] == export.metrics["f1_macro"] and batched.metrics["error_count"] == 0
    # Scores differ per text even where labels do not: a mix-up between requests would show here.
    assert batched.metrics["prediction_mismatches"] == 0 and batched.metrics["score_max_abs_diff"] < 1e-5


def test_artifact_holds_the_serving_config_and_measurements(run):
    art: Artifact = run["serve"].artifact
    assert set(art.manifest["files"]) == {"serving.json", "measurements.json", "server.log"}
    cfg = json.loads((art.path / "serving.json").read_text())
    assert cfg["settings"]["max_concurrency"] == 8 and cfg["model"]["version"] == run["export"].artifact.digest
    measured = json.loads((art.path / "measurements.json").read_text())
    assert measured["clients"] == 4 and measured["status_counts"] == {"200": measured["texts"]}
    assert measured["score_tolerance"] == 1e-5 == art.manifest["details"]["serving"]["score_tolerance"]
    assert "Service lifecycle_classifier initialized" in (art.path / "server.log").read_text()


def test_server_is_stopped_after_the_stage(run):
    import httpx

    measured = json.loads((run["serve"].artifact.path / "measurements.json").read_text())
    assert measured["server_exit_code"] == 0  # SIGTERM, graceful shutdown
    port = measured["port"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)


def test_serve_needs_an_onnx_parent_and_known_metrics():
    with pytest.raises(ConfigError, match=r"stages\[1\]\.parent: 'serve' \(task type classification\) reads onnx-classifier, but its parent 'finetune' holds classifier"):
        config.build({**tiny_with([]), "stages": [tiny_with([])["stages"][0], {"kind": "serve"}]}, base_dir=TINY.parent)
    with pytest.raises(ConfigError, match="cannot produce 'ort_latency_p95_ms'"):
        config.build(tiny_with([{"kind": "serve", "gates": [{"metric": "ort_latency_p95_ms", "max": 10}]}]),
                     base_dir=TINY.parent)
    with pytest.raises(ConfigError, match="unknown key"):
        config.build(tiny_with([{"kind": "serve", "serving": {"worker": 2}}]), base_dir=TINY.parent)
