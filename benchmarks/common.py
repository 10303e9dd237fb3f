"""What the benchmark scripts share: the offline environment (set when this module is imported, so
before lifecycle and the libraries it wraps), and the result file the design fixes: figures, checks,
the environment, wall time and the load average around the run (other jobs may share the cores)."""

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


class Recorder:
    """Started before the measured work; `save` writes benchmarks/results/<topic>.json, `report`
    prints each check and where the file went."""

    def __init__(self, topic: str, quick: bool):
        self.topic, self.quick = topic, quick
        self.started, self.load_before = time.time(), os.getloadavg()

    def save(self, results: dict, checks: list[dict], **extra) -> Path:
        from lifecycle.environment import environment

        out = {"benchmark": self.topic, "quick": self.quick, "results": results, "checks": checks, **extra,
               "loadavg_before": self.load_before, "loadavg_after": os.getloadavg(),
               "seconds": round(time.time() - self.started, 1), "environment": environment()}
        path = ROOT / "benchmarks" / "results" / f"{self.topic}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        return path

    def report(self, checks: list[dict], path: Path, *notes: str) -> None:
        for c in checks:
            print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']:.4g} (target {c['target']})")
        for note in notes:
            print(note)
        print(f"load average before/after: {self.load_before} / {os.getloadavg()}\nwrote {path}")
