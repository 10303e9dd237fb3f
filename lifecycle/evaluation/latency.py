"""Latency, measured one way everywhere: warm-up calls, then N timed calls at a stated batch size,
sequence length and thread count; p50/p95/p99 in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(call: Callable[[], object], warmup: int = 3, runs: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    arr = np.asarray(times)
    return {
        "latency_p50_ms": float(np.percentile(arr, 50)),
        "latency_p95_ms": float(np.percentile(arr, 95)),
        "latency_p99_ms": float(np.percentile(arr, 99)),
    }


LATENCY_METRICS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
