import math

import pytest
from pydantic import ValidationError

from lifecycle.gates import blocking, check, describe
from lifecycle.schema import Gate


def g(**kw) -> Gate:
    return Gate(metric=kw.pop("metric", "accuracy"), **kw)


@pytest.mark.parametrize(
    "gate, value, ref, passed",
    [
        (g(min=0.9), 0.95, None, True),
        (g(min=0.9), 0.9, None, True),  # equal to the bound passes
        (g(min=0.9), 0.8999, None, False),
        (g(metric="latency_p95_ms", max=10), 10.0, None, True),
        (g(metric="latency_p95_ms", max=10), 10.01, None, False),
        (g(max_drop=0.01), 0.89, 0.90, True),
        (g(max_drop=0.01), 0.8899, 0.90, False),
        (g(min_gain=0.0), 0.90, 0.90, True),
        (g(min_gain=0.02), 0.91, 0.90, False),
        (g(metric="latency_p95_ms", max_ratio=0.5), 5.0, 10.0, True),
        (g(metric="latency_p95_ms", max_ratio=0.5), 5.01, 10.0, False),
        (g(metric="speedup", min_ratio=1.6), 1.6, 1.0, True),
        (g(metric="speedup", min_ratio=1.6), 1.59, 1.0, False),
    ],
)
def test_every_bound_type(gate, value, ref, passed):
    ref_metrics = {gate.metric: ref} if ref is not None else None
    result = check(gate, {gate.metric: value}, ref_metrics, "finetune" if gate.relative else None)
    assert result.passed is passed
    assert result.value == value
    assert (result.message == "") is passed


def test_nan_or_missing_metric_fails():
    assert not check(g(min=0.0), {"accuracy": math.nan}).passed
    missing = check(g(min=0.0), {})
    assert not missing.passed and "missing" in missing.message


def test_missing_reference_fails():
    r = check(g(max_drop=0.01), {"accuracy": 0.9}, None, "finetune")
    assert not r.passed and "finetune" in r.message
    r = check(g(max_drop=0.01), {"accuracy": 0.9}, {"accuracy": math.nan}, "finetune")
    assert not r.passed


def test_lower_ci_bound_reads_the_interval():
    gate = g(min=0.9, bound="lower_ci")
    metrics = {"accuracy": 0.93, "accuracy_ci_low": 0.88}
    assert check(g(min=0.9), metrics).passed  # the mean passes...
    r = check(gate, metrics)
    assert not r.passed and r.bound.startswith("accuracy_ci_low")  # ...the lower bound does not


def test_warn_gates_do_not_block():
    r = check(g(min=0.99, on_fail="warn"), {"accuracy": 0.5})
    assert not r.passed and blocking([r]) == []
    r2 = check(g(min=0.99), {"accuracy": 0.5})
    assert blocking([r, r2]) == [r2]


def test_gate_needs_exactly_one_bound():
    with pytest.raises(ValidationError, match="exactly one"):
        Gate(metric="accuracy")
    with pytest.raises(ValidationError, match="exactly one"):
        Gate(metric="accuracy", min=0.1, max=0.9)


def test_describe_names_reference_and_value():
    assert describe(g(min=0.85)) == "accuracy >= 0.85"
    assert describe(g(max_drop=0.01, vs="finetune"), "finetune", 0.91) == "accuracy >= finetune (0.91) - 0.01"
    assert describe(g(metric="latency_p95_ms", max_ratio=0.5), "export") == "latency_p95_ms <= 0.5 x export"
