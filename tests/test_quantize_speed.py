"""The quantize ladder pays in speed: min_speedup gates each rung against the fp32 parent, timed side by
side in one process at batch 1 and at the served batch; `none` (keep fp32) is a legitimate outcome and
the reason is written to the manifest, report.md and junit.xml. Rungs given as configurations."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_export import run_tiny, shared_workdir, tiny_pipeline

from lifecycle import GateFailed
from lifecycle.artifact import Artifact

FAST = {"runs": 4, "warmup": 1}


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


def test_min_speedup_is_a_default_gate_written_once():
    stage = tiny_pipeline({"kind": "quantize"}).stages[2]
    assert [(g.metric, g.min) for g in stage.gates] == [("speedup", 1.0), ("speedup_served", 1.0)]
    # a dumped config read back (lifecycle gate, the cache key) gets no second copy
    again = tiny_pipeline(stage.model_dump(mode="json")).stages[2]
    assert [g.metric for g in again.gates] == ["speedup", "speedup_served"]
    own = tiny_pipeline({"kind": "quantize", "gates": [{"metric": "speedup", "min": 1.5}]}).stages[2]
    assert [(g.metric, g.min) for g in own.gates] == [("speedup", 1.5), ("speedup_served", 1.0)]
    off = tiny_pipeline({"kind": "quantize", "min_speedup": None}).stages[2]
    assert off.gates == [] and not off.measures_speed


# a speedup within noise of 1x, a point estimate on either side of it
NOISY = {"below": {"speedup": 0.98, "speedup_ci_low": 0.93, "speedup_ci_high": 1.04},
         "above": {"speedup": 1.02, "speedup_ci_low": 0.97, "speedup_ci_high": 1.07}}


@pytest.mark.parametrize("policy, bound, passes", [
    ("smaller", "upper_ci", {"below": True, "above": True}),
    ("faster", "mean", {"below": False, "above": True}),
    ("parent", "lower_ci", {"below": False, "above": False}),
])
def test_a_speedup_within_noise_is_decided_by_when_inconclusive(policy, bound, passes):
    """The speed gates read the interval the A/B measured: a rung within noise of min_speedup passes as the
    smaller graph, is decided on its point estimate, or gives way to the parent, as configured; the reason
    says which, with the interval."""
    from lifecycle import gates
    from lifecycle.stages.quantize.ladder import explain, misses

    stage = tiny_pipeline({"kind": "quantize", "when_inconclusive": policy}).stages[2]
    assert [(g.metric, g.min, g.bound) for g in stage.gates] == [("speedup", 1.0, bound), ("speedup_served", 1.0, bound)]
    for side, speed in NOISY.items():
        metrics = {"accuracy": 0.9, **speed, **{k.replace("speedup", "speedup_served"): v for k, v in speed.items()}}
        results = [gates.check(g, metrics) for g in stage.gates]
        assert [r.passed for r in results] == [passes[side]] * 2, side
        attempt = {"rung": "dynamic-int8", "method": "dynamic-int8", "metrics": metrics, "passed": passes[side],
                   "misses": misses(stage, results),
                   "speed": {m: {"speedup": speed["speedup"], "batch_size": b} for m, b in (("speedup", 1), ("speedup_served", 32))}}
        reason = explain(stage, [attempt], attempt, "accuracy")["reason"]
        assert f"speedup {speed['speedup']:.4g} (95% interval {speed['speedup_ci_low']:.4g}-{speed['speedup_ci_high']:.4g})" \
            in reason and "within noise of 1x fp32" in reason and f"(when_inconclusive: {policy})" in reason, reason


def test_rungs_as_configurations():
    p = tiny_pipeline({"kind": "quantize", "min_speedup": None, "fallback": [
        {"method": "static-int8", "calibration": {"method": "entropy", "samples": 512}},
        {"method": "static-int8", "calibration": {"method": "minmax", "samples": 64, "split": "validation"}},
        "dynamic-int8", {"method": "dynamic-int8", "per_channel": False}, "none"]})
    stage = p.stages[2]
    assert stage.ladder == ["static-int8-entropy-512", "static-int8-minmax-64-validation", "dynamic-int8",
                            "dynamic-int8-per-tensor", "none"]
    first = stage.settings(stage.rungs[0])
    assert first.calibration.method == "entropy" and first.calibration.samples == 512 and first.per_channel
    assert stage.settings(stage.rungs[3]).per_channel is False
    from lifecycle import ConfigError

    with pytest.raises(ConfigError, match="twice"):
        tiny_pipeline({"kind": "quantize", "fallback": [{"method": "dynamic-int8"}, "dynamic-int8"]})
    with pytest.raises(ConfigError, match=r"calibration\.split"):
        tiny_pipeline({"kind": "quantize", "fallback": [{"method": "static-int8", "calibration": {"split": "test"}}]})


def speed_words(speedup: float, batch: int) -> str:
    """What the reason must say of a measured speedup, written out here rather than read from the stage."""
    return (f"int8 was {speedup:.2f}x faster than fp32 at batch {batch}" if speedup >= 1
            else f"int8 was {1 / speedup:.2f}x slower than fp32 at batch {batch}")


def test_speed_gate_decides_between_int8_and_none(onnx_workdir):
    """dynamic int8 of the tiny model against its fp32 parent, timed interleaved at batch 1 and 8. Whether
    int8 is faster on this CPU goes either way on so small a model, so no branch here depends on it: a
    bound of 1/50 (no int8 is that slow) keeps int8, with both speedups measured and recorded; the same
    ladder with a fidelity bound only the fp32 parent meets (logits unchanged) keeps `none`, timed as 1.0.
    test_a_rung_that_misses_speed checks the reason a speed miss gives, on a bound no int8 reaches."""
    stage = {"kind": "quantize", "latency": FAST, "served_batch": 8, "fallback": ["dynamic-int8", "none"],
             "min_speedup": 0.02}
    run = run_tiny(onnx_workdir, {**stage, "gates": [{"metric": "accuracy", "max_drop": 0.2, "vs": "export"}]})
    art = Artifact.load(run / "quantize")
    details = art.manifest["details"]
    [int8] = details["attempts"]
    assert int8["rung"] == "dynamic-int8" and int8["passed"] and details["method"] == "dynamic-int8"
    speed = int8["speed"]
    assert speed["speedup"]["batch_size"] == 1 and speed["speedup_served"]["batch_size"] == 8
    for s in speed.values():  # a ratio of the same rounds' medians, with an interval around it
        assert s["rounds"] >= 6 and s["interval"][0] <= s["speedup"] <= s["interval"][1]
        assert s["fp32_ms"] > 0 and s["candidate_ms"] > 0
    gates = {g["metric"]: g for g in art.manifest["gates"]}
    assert {"speedup", "speedup_served", "accuracy"} <= set(gates) and all(g["passed"] for g in gates.values())
    assert details["reason"] == "kept dynamic-int8: the first rung that passes every gate"

    run = run_tiny(onnx_workdir, {**stage, "gates": [{"metric": "logit_max_abs_diff", "max": 0.0}]})
    art = Artifact.load(run / "quantize")
    details = art.manifest["details"]
    int8, none = details["attempts"]
    assert not int8["passed"] and [m["metric"] for m in int8["misses"]] == ["logit_max_abs_diff"]
    assert details["method"] == "none" and none["passed"] and none["metrics"]["speedup"] == 1.0
    assert art.metrics["speedup"] == 1.0 and art.metrics["size_mb"] == pytest.approx(
        Artifact.load(run / "export").metrics["size_mb"])
    assert details["reason"].startswith("kept none (the fp32 parent): dynamic-int8 logit_max_abs_diff ")
    report = (run / "report.md").read_text()
    assert details["reason"] in report and "| dynamic-int8 |" in report  # the attempts side by side


def test_a_rung_that_misses_speed_fails_the_stage_with_the_reason_in_junit(onnx_workdir):
    """One rung and a speed bound no int8 reaches on this model: the stage fails its gate (exit 3), and
    junit.xml's failure carries the reason and the attempts table."""
    stage = {"kind": "quantize", "latency": FAST, "min_speedup": 50.0, "served_batch": 4}
    with pytest.raises(GateFailed, match="speedup"):
        run_tiny(onnx_workdir, stage)
    run = onnx_workdir / "onnx-tiny"
    details = Artifact.load(run / "quantize").manifest["details"]
    assert details["passed"] is False and details["closest"]["rung"] == "dynamic-int8"
    missed = {m["metric"]: m for m in details["closest"]["misses"]}
    assert set(missed) == {"speedup", "speedup_served"}
    metrics = details["attempts"][0]["metrics"]
    # the gate reads the interval's upper end (when_inconclusive: smaller): it misses only when even that is short
    assert missed["speedup"]["missed_by"] == pytest.approx(50.0 - metrics["speedup_ci_high"])
    assert details["reason"].startswith("no rung passes every gate; the closest is dynamic-int8")
    for s in details["attempts"][0]["speed"].values():  # each miss says which way int8 went on this CPU
        words = (f"int8 was {s['speedup']:.2f}x faster" if s["speedup"] >= 1 else f"int8 was {1 / s['speedup']:.2f}x slower")
        assert f"{words} than fp32 at batch {s['batch_size']} on this CPU" in details["reason"], details["reason"]
    failures = [f for f in ET.parse(run / "junit.xml").iter("failure")]
    assert failures and all("no rung passes every gate" in f.get("message") for f in failures)
    assert all("| dynamic-int8 |" in f.text for f in failures)
    report = json.loads((run / "report.json").read_text())
    assert report["stages"][-1]["summary"][0] == details["reason"]
