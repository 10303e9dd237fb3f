"""Does one onnxruntime session's timing depend on what ran before it in the process?

    flock /tmp/lifecycle-heavy.lock python benchmarks/spinning.py [--quick]

Every relative latency in lifecycle (the quantize ladder's min_speedup, the export's fusion choice, the
release gate's A/B, the benchmarks) times two or more sessions in one process, alternating. onnxruntime's
intra-op threads spin after a run by default, waiting for the next one, and on 2 cores the spinning
threads of the session that ran last compete with the session timed now. lifecycle.edge.Predictor
therefore sets `session.force_spinning_stop` (threads still spin between operators within a run) unless
opened with spin_between_runs=True, as a server with ort_spinning is.

Two classifiers of different cost (bert-mini and bert-small presets, exported as in
benchmarks/latency_gate.py), 2 threads, batch 1, 64 tokens, are timed two ways: each alone (blocks of
back-to-back calls, the first calls of every block left out) and alternating call by call. The
distortion is alternating p50 / alone p50, with the stop (Predictor's default) and without it. The stop's
own cost (a wake-up of the pool per run) is the alone p50 with it over the alone p50 without it: recorded,
not gated (a server answering back to back keeps its threads spinning). Writes
benchmarks/results/spinning.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SMOKE, Recorder  # first: it sets the offline environment
from latency_gate import exported

from lifecycle.edge import Predictor
from lifecycle.evaluation.latency import SAMPLE_TEXT, call_times

THREADS, SEQ = 2, 64
MAX_DISTORTION = 1.15  # alternating / alone, with the stop


def timings(calls: dict, rounds: int, block: int, skip: int) -> dict:
    """p50 (ms) of each call alone (blocks of `block` calls, the first `skip` of each left out) and
    alternating call by call, over `rounds` rounds in alternating order."""
    import numpy as np

    alone = {name: [] for name in calls}
    alternating = {name: [] for name in calls}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in order:
            alone[name] += call_times(calls[name], block)[skip:]
        for _ in range(block):
            for name in order:
                alternating[name] += call_times(calls[name], 1)
    return {name: {"alone_p50_ms": float(np.median(alone[name])),
                   "alternating_p50_ms": float(np.median(alternating[name])),
                   "distortion": float(np.median(alternating[name]) / np.median(alone[name]))} for name in calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 rounds instead of 10")
    args = parser.parse_args()
    rounds = 4 if args.quick else 10
    rec = Recorder("spinning", args.quick)
    results = {"threads": THREADS, "seq_len": SEQ, "batch_size": 1, "rounds": rounds, "block": 40, "skip": 10}
    if SMOKE:  # one short round
        results.update(rounds=1, block=4, skip=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {preset: exported(preset, Path(tmp)).path for preset in ("bert-mini", "bert-small")}
        for setting, between in (("spinning_between_runs", True), ("stopped_after_each_run", False)):
            predictors = {name: Predictor.open(path, threads=THREADS, spin_between_runs=between)
                          for name, path in paths.items()}
            feeds = {name: p.encode([SAMPLE_TEXT], pad_to=SEQ) for name, p in predictors.items()}
            calls = {name: (lambda p=p, f=feeds[name]: p.session.run(None, f)) for name, p in predictors.items()}
            for call in calls.values():
                call_times(call, 10)  # warm-up
            results[setting] = timings(calls, results["rounds"], results["block"], results["skip"])
    checks = []
    for name in paths:
        stopped, spinning = results["stopped_after_each_run"][name], results["spinning_between_runs"][name]
        checks.append({"name": f"{name}: alternating / alone p50, spinning stopped after each run (Predictor's default)",
                       "value": stopped["distortion"], "target": f"<= {MAX_DISTORTION}",
                       "passed": stopped["distortion"] <= MAX_DISTORTION})
        stopped["stop_cost"] = stopped["alone_p50_ms"] / spinning["alone_p50_ms"]
    path = rec.save(results, checks)
    notes = [f"{setting:22} {name:10} alone {r['alone_p50_ms']:.2f} ms, alternating {r['alternating_p50_ms']:.2f} ms"
             f" ({r['distortion']:.2f}x)" for setting in ("spinning_between_runs", "stopped_after_each_run")
             for name, r in results[setting].items()]
    raise SystemExit(rec.report(checks, path, *notes))


if __name__ == "__main__":
    main()
