"""What the benchmark scripts share: the offline environment (set when this module is imported, so
before lifecycle and the libraries it wraps), and the result file the design fixes: figures, checks,
the environment with the exact tree (commit, dirty flag, hashes of the scripts and package sources),
wall time and the 1-minute load average around the run (other jobs may share the cores).

Smoke form: with LIFECYCLE_BENCH_SMOKE=1 (or `--smoke` on any benchmark's command line) a benchmark
runs its own path on the smallest sizes it allows (`SMOKE` below; seconds, not a measurement) and
writes its result and plots into a temporary folder, never into benchmarks/results. The default suite
runs the cheap ones this way and checks every benchmark's names and command line
(tests/test_benchmarks_smoke.py), so that none can rot."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECORDED = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "ORT_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(key, value)
if "--smoke" in sys.argv[1:]:  # one flag for every benchmark, read before its own argparse sees the line
    sys.argv.remove("--smoke")
    os.environ["LIFECYCLE_BENCH_SMOKE"] = "1"
SMOKE = os.environ.get("LIFECYCLE_BENCH_SMOKE") == "1"


def results_dir() -> Path:
    """Where results and plots go: $LIFECYCLE_BENCH_RESULTS, else a temporary folder for a smoke run,
    else benchmarks/results."""
    if os.environ.get("LIFECYCLE_BENCH_RESULTS"):
        folder = Path(os.environ["LIFECYCLE_BENCH_RESULTS"])
    elif SMOKE:
        folder = Path(os.environ.setdefault("LIFECYCLE_BENCH_RESULTS", tempfile.mkdtemp(prefix="lifecycle-smoke-")))
    else:
        folder = RECORDED
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def loaded_scripts() -> list[Path]:
    """The benchmark modules this process loaded (the script run and the ones it imports)."""
    here = Path(__file__).resolve().parent
    return [Path(m.__file__).resolve() for m in list(sys.modules.values())
            if getattr(m, "__file__", None) and Path(m.__file__).resolve().parent == here]


def kernel_times(session, skip_runs: int) -> dict[str, dict]:
    """onnxruntime's profile of `session` (opened with Predictor.open(..., profile=...)), its first
    `skip_runs` runs left out: per op type, kernel microseconds summed and kernel calls, busiest first."""
    return trace_kernel_times(Path(session.end_profiling()), skip_runs)


def trace_kernel_times(trace_file: Path, skip_runs: int) -> dict[str, dict]:
    """kernel_times from an onnxruntime profile file (a session another runtime opened, e.g. onnxruntime-genai)."""
    from collections import Counter

    trace = json.loads(trace_file.read_text())
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
    `results_dir()`, for a smoke run that must not replace a recorded result), `report`
    prints each check and where the file went.

    Recording into benchmarks/results on a tree that differs from its commit is refused unless
    LIFECYCLE_BENCH_ALLOW_DIRTY=1; the result's environment then says `"dirty": true`, beside the commit
    and the hashes tests/test_provenance.py compares with the tree's.

    A run that starts with the 1-minute load average above the core count would measure other jobs as
    much as itself: it is refused unless LIFECYCLE_BENCH_ALLOW_BUSY=1. During the run, ForeignCPU
    measures what other processes used; above FOREIGN_CPU_MAX cores on average it is a failed check in
    the result, as is a load above the core count at the start, so a figure measured on a busy machine
    cannot pass unnoticed. The load average after the run is recorded too (it includes the
    benchmark's own threads)."""

    def __init__(self, topic: str, quick: bool):
        from lifecycle.environment import dirty

        self.topic, self.quick = topic, quick
        self.cores = os.cpu_count() or 1
        self.started, self.load_before = time.time(), load_1min()
        self.folder = results_dir()
        self.measured: list[Path] = []  # files besides the benchmark scripts whose hashes the result records
        if self.folder.resolve() == RECORDED and dirty() and os.environ.get("LIFECYCLE_BENCH_ALLOW_DIRTY") != "1":
            raise SystemExit("refused: the tree has changes that are not committed (git status), so the result could "
                             "not name the code it measured. Commit first, or set LIFECYCLE_BENCH_ALLOW_DIRTY=1 (the "
                             'result then records "dirty": true).')
        # a smoke run measures nothing: a busy machine is no reason to refuse it
        if not SMOKE and self.load_before > self.cores and os.environ.get("LIFECYCLE_BENCH_ALLOW_BUSY") != "1":
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
        from lifecycle.environment import environment, provenance

        self.load_after = load_1min()
        foreign = self.foreign.stop()
        checks.extend(self.quiet_checks(foreign))
        out = {"benchmark": self.topic, "quick": self.quick, **({"smoke": True} if SMOKE else {}),
               "results": results, "checks": checks, **extra,
               "loadavg_before": self.load_before, "loadavg_after": self.load_after, "cores": self.cores,
               "foreign_cpu": foreign, "seconds": round(time.time() - self.started, 1),
               "environment": {**environment(), **provenance(loaded_scripts() + self.measured)}}
        path = self.folder / f"{self.topic}.json"
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


def check(name: str, value: float, target: str, passed: bool, premise: bool = True) -> dict:
    """One check of a result. Where its premise fails (a teacher that does not beat its baselines, a
    speedup over eager that is not one over the graph it replaces) it is "vacuous": it neither passes
    nor counts as a failure (`Recorder.report`), and the README shows it as such."""
    return {"name": name, "value": value, "target": target, "passed": passed and premise,
            "status": ("pass" if passed else "fail") if premise else "vacuous"}


def compare(name: str, value: float, op: str, target: float, premise: tuple[str, bool] | None = None) -> dict:
    """`check` of `value OP target`; with `premise` (what it says, whether it holds) recorded beside it."""
    held = {">=": value >= target, "<=": value <= target, "<": value < target, ">": value > target}[op]
    out = check(name, value, f"{op} {target:g}", bool(held), True if premise is None else bool(premise[1]))
    return out if premise is None else {**out, "premise": premise[0]}
