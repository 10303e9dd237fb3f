"""What the benchmark scripts share: the offline environment (set when this module is imported, so
before lifecycle and the libraries it wraps), and the result file the design fixes: figures, checks,
the environment, wall time and the 1-minute load average around the run (other jobs may share the cores)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "ORT_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(key, value)


def load_1min() -> float:
    return round(os.getloadavg()[0], 2)


class Recorder:
    """Started before the measured work; `save` writes benchmarks/results/<topic>.json (or into
    $LIFECYCLE_BENCH_RESULTS, for a smoke run that must not replace a recorded result), `report`
    prints each check and where the file went.

    Every result carries the 1-minute load average before and after the run and the core count. A run
    that starts with the load above the core count measures the other jobs as much as itself: it is
    refused unless LIFECYCLE_BENCH_ALLOW_BUSY=1, and a load above the core count before or after the run
    is a failed check in the result ("load average <= cores"), so a figure measured on a busy machine
    cannot pass unnoticed."""

    def __init__(self, topic: str, quick: bool):
        self.topic, self.quick = topic, quick
        self.cores = os.cpu_count() or 1
        self.started, self.load_before = time.time(), load_1min()
        if self.load_before > self.cores and os.environ.get("LIFECYCLE_BENCH_ALLOW_BUSY") != "1":
            raise SystemExit(f"refused: the 1-minute load average is {self.load_before} on {self.cores} cores; other "
                             "jobs would be measured too. Wait for a quiet machine, or set "
                             "LIFECYCLE_BENCH_ALLOW_BUSY=1 (the result then records a failed load check).")

    def load_check(self, load_after: float) -> dict:
        worst = max(self.load_before, load_after)
        return {"name": "1-minute load average before and after the run <= cores", "value": worst,
                "target": f"<= {self.cores}", "passed": worst <= self.cores}

    def save(self, results: dict, checks: list[dict], **extra) -> Path:
        """Writes the result; appends the load check to `checks` (the caller's list), so `report` and the
        exit status see it too."""
        from lifecycle.environment import environment

        self.load_after = load_1min()
        checks.append(self.load_check(self.load_after))
        out = {"benchmark": self.topic, "quick": self.quick, "results": results, "checks": checks, **extra,
               "loadavg_before": self.load_before, "loadavg_after": self.load_after, "cores": self.cores,
               "seconds": round(time.time() - self.started, 1), "environment": environment()}
        folder = Path(os.environ.get("LIFECYCLE_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.topic}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        return path

    def report(self, checks: list[dict], path: Path, *notes: str) -> int:
        """Prints the checks and notes; returns the exit status (1 when a check failed)."""
        for c in checks:
            print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']:.4g} (target {c['target']})")
        for note in notes:
            print(note)
        print(f"1-minute load average before/after: {self.load_before} / {self.load_after} on {self.cores} cores"
              f"\nwrote {path}")
        return 0 if all(c["passed"] for c in checks) else 1
