"""Relative latency gates: candidate and reference re-timed side by side (interleaved) in one process, the
ratio judged by its interval, `inconclusive` when the interval straddles the bound."""

import json
import math
import types

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


def test_ab_ratio_measures_a_2x_difference_round_by_round(monkeypatch):
    """Counted, not slept: a clock that each call advances by a known amount (2 ms against 4 ms, +-10% by
    round, so that the interval has a width) makes every round's figure known, so the ratio, its interval,
    the verdicts, the ABBA order and the number of calls are checked exactly, whatever the machine's load."""
    from lifecycle.evaluation import latency

    now, calls = [0.0], []

    def timed(name: str, ms: float):
        def call():
            rounds = sum(1 for c in calls if c == "b")  # slow's calls so far index the rounds' jitter
            now[0] += ms / 1000 * (1.1 if rounds // 5 % 2 else 0.9)
            calls.append(name)
        return call

    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    fast, slow = timed("a", 2.0), timed("b", 4.0)
    passed = ab_ratio(fast, slow, bound=0.8, kind="max_ratio", rounds=4, calls=5, warmup=1)
    assert passed["verdict"] == "pass" and passed["rounds"] == 4 and calls.count("a") == 1 + 4 * 5
    assert passed["interval"][0] <= passed["ratio"] <= passed["interval"][1] < 0.8
    assert 0.4 < passed["ratio"] < 0.6  # 2 ms over 4 ms, with the jitter of the rounds each side met
    assert {"load_before", "load_after", "candidate_ms", "reference_ms"} <= set(passed)
    # ABBA: after the warm-up pair, rounds alternate which side goes first
    blocks = [calls[i] for i in range(2, len(calls), 5)]
    assert blocks[:4] == ["a", "b", "b", "a"]
    calls.clear()
    failed = ab_ratio(slow, fast, bound=1.2, kind="max_ratio", rounds=4, calls=5, warmup=1)
    assert failed["verdict"] == "fail" and 1.6 < failed["ratio"] < 2.5 and failed["rounds"] == 4
    calls.clear()  # a bound inside the interval: re-measured in blocks of 4 rounds up to max_rounds
    unsure = ab_ratio(fast, slow, bound=passed["ratio"], kind="max_ratio", rounds=4, max_rounds=12, calls=5, warmup=1)
    assert unsure["verdict"] == "inconclusive" and unsure["rounds"] == 12 and calls.count("b") == 1 + 12 * 5


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
