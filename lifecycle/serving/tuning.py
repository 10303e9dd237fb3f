"""`lifecycle serve --tune`: measure a small grid of settings on the actual model and machine, keep the
fastest error-free one (written beside the artifact, read back by settings.load_settings)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.artifact import write_json
from lifecycle.serving.loadgen import json_request, run_load
from lifecycle.serving.server import Server
from lifecycle.serving.settings import SAMPLE_TEXT, ServingSettings, write_config
from lifecycle.serving.source import Served


def tuning_grid(cores: int | None = None) -> list[ServingSettings]:
    """A small grid around what was measured by hand. Unbatched: one worker (onnxruntime on every core,
    or on one, leaving the other to HTTP handling) or one worker per core. Batched: one worker with
    spinning onnxruntime threads at two max_latency_ms values (the lower one may shed load with 503s:
    measured, not assumed), or one single-threaded worker per core. Spinning pays only with batching:
    MiniLM at batch 8 on 2 threads gets 1.3x the samples/s with it, while an unbatched server's spinning
    threads take the cores that HTTP handling needs."""
    cores = cores or os.cpu_count() or 1
    grid = [ServingSettings(workers=1, ort_threads=cores)]
    if cores >= 2:
        grid += [ServingSettings(workers=1, ort_threads=1), ServingSettings(workers=cores, ort_threads=1)]
    batched = {"batching": True, "max_batch_size": 16}
    for latency in (100, 400):
        grid.append(ServingSettings(workers=1, ort_threads=cores, ort_spinning=cores > 1, max_latency_ms=latency,
                                    **batched))
    if cores >= 2:
        grid.append(ServingSettings(workers=cores, ort_threads=1, max_latency_ms=1000, **batched))
    return grid


def measure_settings(served: Served, settings: ServingSettings, clients: int = 8, duration_s: float = 10.0,
                     text: str = SAMPLE_TEXT, warmup_s: float = 2.0) -> dict:
    """Start the service with these settings; load it from `clients` keep-alive connections for
    duration_s, then from one for half as long (the latency a lightly loaded server gives). Each
    worker's share of the server's CPU time is kept: with several workers, which one serves a
    connection is the kernel's choice (see ServingSettings.max_connection_age_s)."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-tune-") as tmp:
        config = write_config(served, settings, Path(tmp) / "serving.json")
        with Server(config, log=Path(tmp) / "server.log") as server:
            request = [json_request(server.port, {"texts": [text]})]
            run_load(server.port, request, clients, duration_s=warmup_s)
            cpu_before, client_before = server.cpu_seconds(), time.process_time()
            result = run_load(server.port, request, clients, duration_s=duration_s).summary()
            cpu_after, done = server.cpu_seconds(), max(result["requests"], 1)
            client_ms = (time.process_time() - client_before) * 1000 / done
            one = run_load(server.port, request, 1, duration_s=duration_s / 2).summary()
    cpu_ms = (sum(cpu_after.values()) - sum(cpu_before.values())) * 1000 / done
    # CPU per request is steadier than req/s when other jobs share the cores: 1000 * cores / cpu_ms
    # bounds what this server could do on an otherwise idle machine.
    return {"settings": settings.model_dump(mode="json"), "clients": clients, **result,
            "server_cpu_ms_per_request": cpu_ms, "client_cpu_ms_per_request": client_ms,
            "worker_cpu_shares": server.worker_shares(cpu_before, cpu_after), "one_client": one}


def pick_best(measurements: list[dict]) -> dict:
    """Among settings without a single error and within 10% of the highest throughput, an unbatched one
    when its p95 under load is within 10% of the lowest, else the lowest p95 under load plus p50 at one
    client. Both rules keep adaptive batching from winning a tie: its dispatcher waits to fill a batch,
    which a lone client pays for, and how long it waits is learned anew at each start (one client p50
    2.4 ms while tuning, 5.3 ms on the next start, same settings and model)."""
    clean = [m for m in measurements if m["error_count"] == 0 and m["ok"] > 0]
    if not clean:
        raise LifecycleError("every serving setting tried answered errors under load; see the measurements")
    top = max(m["requests_per_s"] for m in clean)
    near = [m for m in clean if m["requests_per_s"] >= 0.9 * top]
    lowest_p95 = min(m["http_latency_p95_ms"] for m in near)
    unbatched = [m for m in near if not m["settings"]["batching"] and m["http_latency_p95_ms"] <= 1.1 * lowest_p95]
    return min(unbatched or near, key=lambda m: m["http_latency_p95_ms"] + m["one_client"]["http_latency_p50_ms"])


def tune_settings(served: Served, clients: int = 8, duration_s: float = 10.0, echo=print) -> ServingSettings:
    """`lifecycle serve --tune`: measure the grid on this model and machine, write the best settings and
    every measurement beside the artifact (`<artifact>.serving.json`), and return the best."""
    from lifecycle.environment import environment

    measurements = []
    for settings in tuning_grid():
        m = measure_settings(served, settings, clients, duration_s)
        echo(f"  workers={settings.workers} threads={settings.ort_threads} spinning={settings.ort_spinning}"
             f" batching={settings.batching}"
             f" max_latency_ms={settings.max_latency_ms}: {m['requests_per_s']:.0f} req/s,"
             f" p95 {m['http_latency_p95_ms']:.1f} ms, errors {m['error_count']};"
             f" one client p50 {m['one_client']['http_latency_p50_ms']:.1f} ms;"
             f" server CPU {m['server_cpu_ms_per_request']:.2f} ms/request"
             + (f"; worker CPU shares {'/'.join(f'{x:.2f}' for x in m['worker_cpu_shares'])}"
                if settings.workers > 1 else ""))
        measurements.append(m)
    best = pick_best(measurements)
    write_json(served.tuned_path, {"model": served.name, "version": served.version, "settings": best["settings"],
                                   "best": best, "measurements": measurements, "environment": environment()})
    echo(f"best settings written to {served.tuned_path}")
    return ServingSettings.model_validate(best["settings"])

