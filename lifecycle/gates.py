"""Gate evaluation: a metric value against an absolute bound or a reference stage's value.

A gate fails on a missing or NaN value and on a missing reference: a gate that cannot be checked
must never pass silently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lifecycle import workloads
from lifecycle.schema import Gate


@dataclass
class GateResult:
    metric: str
    bound: str  # human form, e.g. "accuracy >= finetune (0.91) - 0.01"
    value: float | None
    reference: float | None
    passed: bool
    on_fail: str
    vs: str | None = None  # reference stage name for relative gates
    message: str = ""
    verdict: str | None = None  # pass | fail | warn | inconclusive
    interval: list[float] | None = None  # 95% interval: candidate - release (paired bootstrap), or a latency ratio
    p_value: float | None = None  # release gates: McNemar's exact test (accuracy) or the bootstrap's
    details: dict | None = None  # how it was measured (rounds, load average before/after)

    def to_dict(self) -> dict:
        return asdict(self)


def describe(gate: Gate, reference: str | None = None, ref_value: float | None = None) -> str:
    """Human form of a gate's bound, e.g. 'accuracy >= 0.85' or 'latency_p95_ms <= 0.5 x finetune'."""
    ref = reference or gate.vs
    if ref_value is not None and _finite(ref_value):
        ref = f"{ref} ({ref_value:.4g})"
    name, t = gate.value_key, gate.threshold
    return {
        "min": f"{name} >= {t:g}",
        "max": f"{name} <= {t:g}",
        "max_drop": f"{name} >= {ref} - {t:g}",
        "min_gain": f"{name} >= {ref} + {t:g}",
        "max_ratio": f"{name} <= {t:g} x {ref}",
        "min_ratio": f"{name} >= {t:g} x {ref}",
    }[gate.kind]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check(gate: Gate, metrics: dict, reference_metrics: dict | None = None, reference: str | None = None) -> GateResult:
    value = metrics.get(gate.value_key)
    ref_value = (reference_metrics or {}).get(gate.value_key if gate.bound == "mean" else gate.ref_key)
    ref_value = None if ref_value is None else float(ref_value)
    bound = describe(gate, reference, ref_value)
    result = GateResult(gate.metric, bound, value, ref_value if gate.relative else None, False, gate.on_fail,
                        reference if gate.relative else None)
    if not _finite(value):
        result.message = f"{gate.value_key} is {'missing' if value is None else value}"
        return result
    t = gate.threshold
    if gate.kind == "min":
        result.passed = value >= t
    elif gate.kind == "max":
        result.passed = value <= t
    else:
        if not _finite(ref_value):
            result.message = f"reference {reference or gate.vs} has no {gate.metric}"
            return result
        result.passed = {
            "max_drop": value >= ref_value - t,
            "min_gain": value >= ref_value + t,
            "max_ratio": value <= ref_value * t,
            "min_ratio": value >= ref_value * t,
        }[gate.kind]
    if not result.passed:
        result.message = f"{gate.value_key} = {value:.6g} violates {bound}"
    return _with_verdict(result)


def _with_verdict(result: GateResult) -> GateResult:
    result.verdict = "pass" if result.passed else ("fail" if result.on_fail == "stop" else "warn")
    return result


def check_interleaved(gate: Gate, candidate, reference, reference_name: str, max_length: int) -> GateResult:
    """A relative latency gate on a fresh A/B measurement of the two artifacts in this process (see
    lifecycle.evaluation.latency.ab_ratio), at the candidate stage's batch size, length and threads."""
    from lifecycle.environment import fingerprint
    from lifecycle.evaluation.latency import ab_ratio, artifact_call

    settings = (candidate.manifest.get("config") or {}).get("latency") or {}
    batch = 32 if "_b32_" in gate.metric else settings.get("batch_size", 1)
    seq, threads = settings.get("seq_len") or max_length, settings.get("threads")
    percentile = next((q for q in (50, 95, 99) if f"_p{q}_" in gate.metric), 50)
    ab = ab_ratio(artifact_call(candidate.path, candidate.kind, batch, seq, threads),
                  artifact_call(reference.path, reference.kind, batch, seq, threads),
                  gate.threshold, gate.kind, percentile)
    lo, hi = ab["interval"]
    op = "<=" if gate.kind == "max_ratio" else ">="
    bound = f"{gate.metric} {op} {gate.threshold:g} x {reference_name} (interleaved A/B, batch {batch}, seq {seq})"
    result = GateResult(gate.metric, bound, ab["candidate_ms"], ab["reference_ms"], ab["verdict"] == "pass",
                        gate.on_fail, reference_name, interval=[lo, hi],
                        details={**ab, "environment": fingerprint(threads)})
    text = f"ratio {ab['ratio']:.3f} [{lo:.3f}, {hi:.3f}] over {ab['rounds']} rounds"
    if ab["verdict"] == "inconclusive":
        result.message = f"inconclusive: {text} straddles {gate.threshold:g} after the re-measure budget"
        result.on_fail = "warn" if gate.on_inconclusive == "warn" else gate.on_fail
        result.verdict = "inconclusive"
        return result
    if not result.passed:
        result.message = f"{gate.metric}: {text} violates {bound}"
    return _with_verdict(result)


# Scores that depend on the examples they were computed on. A stage that selects (a ladder rung, a
# checkpoint) judges candidates on validation; so every stage also reports each of these it computes on
# validation as `val_<name>`, and a reference stage is read through `on_validation` during a selection.


def split_scores() -> set[str]:
    """Every task's scores that depend on the examples they were computed on."""
    return {m for t in workloads.tasks() for m in t.split_scores}


def on_validation(metrics: dict) -> dict:
    """What a selection may look at: validation scores under their plain names, split-free measurements
    (latency, size) as they are, and no test score (a gate on a score with no validation value fails)."""
    scores = split_scores()
    view = {k: v for k, v in metrics.items() if k not in scores and not k.startswith("val_")}
    view.update({k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_")})
    return view


def blocking(results: list[GateResult]) -> list[GateResult]:
    """Failed gates that stop the pipeline (on_fail: stop)."""
    return [r for r in results if not r.passed and r.on_fail == "stop"]


# ------------------------------------------------------------------------------ against a release
# A gate with `vs: "release:NAME"` compares a stage's artifact with a release in the MLflow Model Registry
# (lifecycle.release): NAME is an alias or version of the pipeline's registered model, or models:/MODEL@ALIAS.
# On accuracy and F1 the comparison is paired, on the same test examples: the delta's 95% interval
# (paired bootstrap) and a p-value (McNemar's exact test for accuracy). `bound` picks the end of the
# interval that decides: for max_drop, `upper_ci` passes only when even the pessimistic end of the
# drop is within the margin (non-inferiority: the candidate must show it is not worse), `lower_ci` fails
# only when even the optimistic end exceeds it (a regression beyond doubt), `mean` reads the point
# estimate; for min_gain the same ends of the gain. Other metrics (latency, size) compare with the
# release's recorded value, as a stage reference would be.


def describe_release(gate: Gate, version: str | None = None, ref_value: float | None = None) -> str:
    ref = f"{gate.vs}" + (f" [{version}]" if version else "")
    if ref_value is not None and _finite(ref_value):
        ref = f"{ref} ({ref_value:.4g})"
    ends = {"mean": "", "upper_ci": ", upper 95% CI", "lower_ci": ", lower 95% CI"}
    if gate.kind == "max_drop":
        return f"{gate.metric} drop vs {ref} <= {gate.threshold:g}{ends[gate.bound]}"
    if gate.kind == "min_gain":
        return f"{gate.metric} gain vs {ref} >= {gate.threshold:g}{ends[gate.bound]}"
    return describe(gate, ref, None)


def check_release(gate: Gate, artifact, baseline, seed: int = 0) -> GateResult:
    """`gate` (vs: "release:NAME") on `artifact` against the resolved registry entry `baseline`.
    Raises release.DataMismatch when the two were scored on different test examples."""
    from lifecycle import release

    ref_value = baseline.metrics.get(gate.metric)
    if gate.metric not in release.PAIRED or gate.kind not in ("max_drop", "min_gain"):
        result = check(gate, artifact.metrics, baseline.metrics, f"{gate.vs} [{baseline.version}]")
        result.bound, result.vs = describe_release(gate, baseline.version, ref_value), gate.vs
        return result
    from lifecycle.evaluation import TEST_PREDICTIONS, Predictions

    cand = Predictions.load(artifact.path / TEST_PREDICTIONS)
    c = release.compare(gate.metric, baseline.predictions(), cand, seed,
                        what=f"release {gate.release} ({baseline.uri})")
    t, eps = gate.threshold, 1e-12  # eps: a drop of exactly the margin, in float arithmetic, passes
    decide = {"mean": c.delta, "upper_ci": c.high, "lower_ci": c.low}
    if gate.kind == "max_drop":  # the drop's interval is [-high, -low]: its upper end is -low
        drop = {"mean": -c.delta, "upper_ci": -c.low, "lower_ci": -c.high}[gate.bound]
        passed = drop <= t + eps
    else:
        passed = decide[gate.bound] >= t - eps
    bound = describe_release(gate, baseline.version, c.baseline)
    message = f"{c.describe()} against {gate.release} [{baseline.version}]"
    if not passed:
        message += f": violates {bound}"
    return GateResult(gate.metric, bound, c.candidate, c.baseline, passed, gate.on_fail, gate.vs, message,
                      interval=[c.low, c.high], p_value=c.p_value)


def release_gate(gate: Gate, artifact, registry=None) -> GateResult:
    """check_release for a pipeline's gate: a missing entry or mismatched test data is a failed gate
    (with its reason), never a gate that passes unchecked."""
    from lifecycle import LifecycleError, release

    try:
        return check_release(gate, artifact, release.resolve(gate.release, registry, artifact.path.parent.name))
    except LifecycleError as exc:
        return GateResult(gate.metric, describe_release(gate), None, None, False, gate.on_fail, gate.vs, str(exc))
