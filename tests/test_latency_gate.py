"""Relative latency gates: candidate and reference re-timed side by side (interleaved) in one process, the
ratio judged by its interval, `inconclusive` when the interval straddles the bound."""

import json
import math
import time

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle import ConfigError
from lifecycle.cli import main
from lifecycle.config import build
from lifecycle.evaluation.latency import ab_ratio, ratio_verdict


@pytest.mark.parametrize(("logs", "bound", "kind", "verdict"), [
    ([math.log(0.5)] * 3 + [math.log(0.52)] * 3, 0.7, "max_ratio", "pass"),
    ([math.log(0.5)] * 3 + [math.log(0.52)] * 3, 0.4, "max_ratio", "fail"),
    ([math.log(0.5)] * 3 + [math.log(0.52)] * 3, 0.7, "min_ratio", "fail"),
    ([math.log(0.5)] * 3 + [math.log(0.52)] * 3, 0.4, "min_ratio", "pass"),
    ([math.log(0.4), math.log(0.6), math.log(0.45), math.log(0.58)], 0.5, "max_ratio", "inconclusive"),
])
def test_ratio_verdict(logs, bound, kind, verdict):
    got, (lo, hi) = ratio_verdict(logs, bound, kind)
    assert got == verdict and lo <= math.exp(sum(logs) / len(logs)) <= hi


def test_ab_ratio_measures_a_real_2x_difference():
    fast, slow = (lambda: time.sleep(0.002)), (lambda: time.sleep(0.004))
    passed = ab_ratio(fast, slow, bound=0.8, kind="max_ratio", rounds=4, calls=5, warmup=1)
    assert passed["verdict"] == "pass" and 0.35 < passed["ratio"] < 0.7 and passed["rounds"] == 4
    assert passed["interval"][0] <= passed["ratio"] <= passed["interval"][1]
    assert {"load_before", "load_after", "candidate_ms", "reference_ms"} <= set(passed)
    failed = ab_ratio(slow, fast, bound=1.2, kind="max_ratio", rounds=4, calls=5, warmup=1)
    assert failed["verdict"] == "fail" and failed["ratio"] > 1.4


def test_cross_runtime_latency_gate_needs_both_metrics_named():
    raw = tiny_pipeline()
    raw["stages"][1]["gates"] = [{"metric": "ort_latency_p50_ms", "max_ratio": 0.5, "vs": "finetune"}]
    with pytest.raises(ConfigError, match="another runtime"):
        build(raw)


def test_interleaved_gate_in_a_run_records_ratio_interval_and_environment(tmp_path):
    raw = tiny_pipeline()
    raw["stages"].append({"kind": "quantize", "latency": {"runs": 3, "batch32": False}, "min_speedup": None, "gates": [
        {"metric": "ort_latency_p50_ms", "max_ratio": 20.0, "vs": "export"},   # clearly met
        {"metric": "ort_latency_p50_ms", "max_ratio": 0.01, "vs": "export", "on_fail": "warn"},  # clearly missed
    ]})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "p.yaml"), "--workdir", str(tmp_path / "runs")]) == 0
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    met, missed = report["stages"][2]["gates"]
    assert met["verdict"] == "pass" and missed["verdict"] == "warn" and not missed["passed"]
    for gate in (met, missed):
        lo, hi = gate["interval"]
        assert 0 < lo <= hi and "interleaved" in gate["bound"]
        assert gate["details"]["rounds"] >= 8 and "loadavg" in gate["details"]["environment"]
        assert gate["details"]["environment"]["cpu"]
    assert "violates" in missed["message"]
    # the PyTorch side of a cross-runtime gate: one call of the finetune artifact at batch 2
    from lifecycle.evaluation.latency import artifact_call

    out = artifact_call(tmp_path / "runs" / "tiny" / "finetune", "hf-model", 2, 16, 1)()
    assert tuple(out.logits.shape) == (2, 5)
