"""What the benchmark scripts share: the offline environment (set when this module is imported, so
before lifecycle and the libraries it wraps), and the result file the design fixes: figures, checks,
the environment, wall time and the 1-minute load average around the run (other jobs may share the cores)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "ORT_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(key, value)


def kernel_times(session, skip_runs: int) -> dict[str, dict]:
    """onnxruntime's profile of `session` (opened with Predictor.open(..., profile=...)), its first
    `skip_runs` runs left out: per op type, kernel microseconds summed and kernel calls, busiest first."""
    from collections import Counter

    trace = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    since = runs[skip_runs]["ts"]
    us, calls = Counter(), Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= since:
            us[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
    return {op: {"us": t, "calls": calls[op]} for op, t in us.most_common()}


def load_1min() -> float:
    return round(os.getloadavg()[0], 2)


FOREIGN_CPU_MAX = 0.2  # cores: what other processes may use on average while a benchmark runs


class ForeignCPU(threading.Thread):
    """CPU used by processes outside this process tree, sampled every `interval` seconds.

    The load average cannot tell whether another job shared the cores with a benchmark that keeps
    every core busy itself (two torch threads on two cores read ~2.0 alone). This asks directly: the
    CPU time each process outside our tree used between two samples. A process of ours that outlives
    its parent (re-parented to init) counts as foreign, and a foreign job shorter than one interval is
    missed: both err towards a failed check for anything long enough to move a timing.

    On a virtual machine the hypervisor may also run other guests on our cores: that time (steal, from
    /proc/stat; 0 where the kernel does not report it) is recorded beside, not gated."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.samples, self.steal = interval, [], []
        self._done, self._last, self._last_steal = threading.Event(), self._snapshot(), self._steal_seconds()

    @staticmethod
    def _steal_seconds() -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return 0.0
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0

    @staticmethod
    def _snapshot() -> dict[int, tuple[int, float]]:
        import psutil

        out = {}
        for p in psutil.process_iter(["ppid", "cpu_times"]):
            t = p.info["cpu_times"]
            if t is not None:
                out[p.pid] = (p.info["ppid"], t.user + t.system)
        return out

    @staticmethod
    def _ours(pid: int, snapshot: dict, mine: int) -> bool:
        for _ in range(64):  # ancestry walk, bounded
            if pid == mine:
                return True
            if pid not in snapshot or pid in (0, 1):
                return False
            pid = snapshot[pid][0]
        return False

    def run(self) -> None:
        mine = os.getpid()
        while not self._done.wait(self.interval):
            now = self._snapshot()
            used = sum(cpu - self._last[pid][1] for pid, (_, cpu) in now.items()
                       if pid in self._last and not self._ours(pid, now, mine))
            self.samples.append(used / self.interval)
            steal = self._steal_seconds()
            self.steal.append((steal - self._last_steal) / self.interval)
            self._last, self._last_steal = now, steal

    def stop(self) -> dict:
        self._done.set()
        self.join()
        def summary(samples: list[float]) -> tuple[float, float]:
            s = sorted(samples) or [0.0]
            return round(sum(s) / len(s), 3), round(s[int(0.95 * (len(s) - 1))], 3)

        (mean, p95), (steal_mean, steal_p95) = summary(self.samples), summary(self.steal)
        return {"mean_cores": mean, "p95_cores": p95, "steal_mean_cores": steal_mean, "steal_p95_cores": steal_p95,
                "samples": len(self.samples), "interval_s": self.interval}


class Recorder:
    """Started before the measured work; `save` writes benchmarks/results/<topic>.json (or into
    $LIFECYCLE_BENCH_RESULTS, for a smoke run that must not replace a recorded result), `report`
    prints each check and where the file went.

    A run that starts with the 1-minute load average above the core count would measure other jobs as
    much as itself: it is refused unless LIFECYCLE_BENCH_ALLOW_BUSY=1. During the run, ForeignCPU
    measures what other processes used; above FOREIGN_CPU_MAX cores on average it is a failed check in
    the result, as is a load above the core count at the start, so a figure measured on a busy machine
    cannot pass unnoticed. The load average after the run is recorded too (it includes the
    benchmark's own threads)."""

    def __init__(self, topic: str, quick: bool):
        self.topic, self.quick = topic, quick
        self.cores = os.cpu_count() or 1
        self.started, self.load_before = time.time(), load_1min()
        if self.load_before > self.cores and os.environ.get("LIFECYCLE_BENCH_ALLOW_BUSY") != "1":
            raise SystemExit(f"refused: the 1-minute load average is {self.load_before} on {self.cores} cores; other "
                             "jobs would be measured too. Wait for a quiet machine, or set "
                             "LIFECYCLE_BENCH_ALLOW_BUSY=1 (the result then records a failed load check).")
        self.foreign = ForeignCPU()
        self.foreign.start()

    def quiet_checks(self, foreign: dict) -> list[dict]:
        return [{"name": "1-minute load average before the run <= cores", "value": self.load_before,
                 "target": f"<= {self.cores}", "passed": self.load_before <= self.cores},
                {"name": "CPU used by other processes during the run (mean, cores)", "value": foreign["mean_cores"],
                 "target": f"<= {FOREIGN_CPU_MAX}", "passed": foreign["mean_cores"] <= FOREIGN_CPU_MAX}]

    def save(self, results: dict, checks: list[dict], **extra) -> Path:
        """Writes the result; appends the quiet-machine checks to `checks` (the caller's list), so `report`
        and the exit status see them too."""
        from lifecycle.environment import environment

        self.load_after = load_1min()
        foreign = self.foreign.stop()
        checks.extend(self.quiet_checks(foreign))
        out = {"benchmark": self.topic, "quick": self.quick, "results": results, "checks": checks, **extra,
               "loadavg_before": self.load_before, "loadavg_after": self.load_after, "cores": self.cores,
               "foreign_cpu": foreign,
               "seconds": round(time.time() - self.started, 1), "environment": environment()}
        folder = Path(os.environ.get("LIFECYCLE_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.topic}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        return path

    def report(self, checks: list[dict], path: Path, *notes: str) -> int:
        """Prints the checks and notes; returns the exit status (1 when a check failed)."""
        for c in checks:  # a check whose premise failed says "vacuous" (and does not pass)
            shown = c.get("status", "pass" if c["passed"] else "fail").upper()
            print(f"{shown:<7} {c['name']}: {c['value']:.4g} (target {c['target']})")
        for note in notes:
            print(note)
        print(f"1-minute load average before/after: {self.load_before} / {self.load_after} on {self.cores} cores"
              f"\nwrote {path}")
        return 0 if all(c["passed"] or c.get("status") == "vacuous" for c in checks) else 1
