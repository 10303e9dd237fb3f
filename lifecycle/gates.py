"""Gate evaluation: a metric value against an absolute bound or a reference stage's value.

A gate fails on a missing or NaN value and on a missing reference: a gate that cannot be checked
must never pass silently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
    ref_value = (reference_metrics or {}).get(gate.value_key if gate.bound == "mean" else gate.metric)
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
    return result


def blocking(results: list[GateResult]) -> list[GateResult]:
    """Failed gates that stop the pipeline (on_fail: stop)."""
    return [r for r in results if not r.passed and r.on_fail == "stop"]
