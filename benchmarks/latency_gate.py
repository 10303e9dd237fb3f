"""How often a relative latency gate gives the wrong verdict, on an idle and on a loaded machine.

    flock /tmp/lifecycle-heavy.lock python benchmarks/latency_gate.py [--quick]

Two ONNX classifiers of clearly different cost (bert-mini and bert-small presets, fine-tuned for one
epoch on 300 news texts, exported) are gated against each other with `check_interleaved`, the code
`lifecycle run` and `lifecycle gate` use: candidate bert-mini vs reference bert-small. Their true ratio
is measured first (many interleaved rounds); then bounds are placed at 0.6x and 1.6x that ratio, so the
correct verdict is known: `max_ratio` at 1.6x the ratio must pass, at 0.6x must fail. Each verdict is
repeated N times idle, and N times while a competing process spins on one core. A wrong verdict is a
pass where a fail is due or the reverse; `inconclusive` is allowed (under load it is the honest answer).
Writes benchmarks/results/latency_gate.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from pathlib import Path

from common import ROOT, SMOKE, Recorder  # first: it sets the offline environment

from lifecycle import config, pipeline
from lifecycle.artifact import Artifact
from lifecycle.schema import Gate

TESTS_DATA = ROOT / "tests" / "data" / "news_tiny.jsonl"


def exported(preset: str, workdir: Path) -> Artifact:
    raw = {"name": preset, "seed": 0,
           "data": {"news": {"format": "jsonl", "path": str(TESTS_DATA), "split": {"validation": 0.2, "test": 0.2}}},
           "task": {"data": "news", "max_length": 64},
           "stages": [{"kind": "finetune", "model": {"preset": preset, "tokenizer": {"vocab_size": 800}},
                       "train": {"epochs": 1, "batch_size": 32}, "latency": {"runs": 3},
                       "collapse_min": None},  # one epoch from random init: these exist for their latency
                      {"kind": "export", "latency": {"runs": 3, "batch32": False, "threads": 1}}]}
    pipeline.run(config.build(raw), workdir=workdir, echo=lambda *a: None)
    return Artifact.load(workdir / preset / "export")


def spin(stop) -> None:  # a competing job on one core
    os.sched_setaffinity(0, {0})
    while not stop.is_set():
        pass


def verdicts(small: Artifact, large: Artifact, bound: float, repeats: int) -> list[str]:
    from lifecycle.gates import check_interleaved

    gate = Gate(metric="ort_latency_p50_ms", max_ratio=bound, vs="reference")
    return [check_interleaved(gate, small, large, "reference", 64).verdict for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 repeats per condition instead of 20")
    args = parser.parse_args()
    repeats = 1 if SMOKE else 8 if args.quick else 20
    rec = Recorder("latency_gate", args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        small, large = exported("bert-mini", Path(tmp)), exported("bert-small", Path(tmp))
        from lifecycle.evaluation.latency import ab_ratio, artifact_call

        truth = ab_ratio(artifact_call(small.path, small.kind, 1, 64, 1), artifact_call(large.path, large.kind, 1, 64, 1),
                         bound=float("inf"), kind="max_ratio", rounds=4 if SMOKE else 40,
                         max_rounds=4 if SMOKE else 40)
        ratio = truth["ratio"]
        results = {"true_ratio": ratio, "true_interval": truth["interval"], "repeats": repeats, "conditions": {}}
        for condition in ("idle", "loaded"):
            stop = mp.Event()
            hog = mp.Process(target=spin, args=(stop,)) if condition == "loaded" else None
            if hog:
                hog.start()
            try:
                results["conditions"][condition] = {
                    "should_pass": verdicts(small, large, 1.6 * ratio, repeats),
                    "should_fail": verdicts(small, large, 0.6 * ratio, repeats),
                    "loadavg": os.getloadavg()[0]}
            finally:
                stop.set()
                if hog:
                    hog.join()
    checks = []
    for condition, got in results["conditions"].items():
        wrong = got["should_pass"].count("fail") + got["should_fail"].count("pass")
        got["wrong"], got["inconclusive"] = wrong, (got["should_pass"] + got["should_fail"]).count("inconclusive")
        checks.append({"name": f"{condition}: wrong verdicts of {2 * repeats}", "value": wrong, "target": "== 0",
                       "passed": wrong == 0})
        print(f"{condition:7} pass-due: {got['should_pass']}\n{'':7} fail-due: {got['should_fail']}")
    path = rec.save(results, checks)
    rec.report(checks, path, f"true ratio bert-mini / bert-small at batch 1: {ratio:.3f} {truth['interval']}")


if __name__ == "__main__":
    main()
