"""Serving: the settings of the BentoML service (serving/service.py), what to serve, starting and
stopping `bentoml serve`, loopback load, `lifecycle serve [--tune]` and `lifecycle build`.

Measured on 2 CPU cores: adaptive batching gains little on CPU, the HTTP/Python path costs more CPU
per request than a small model's inference (~5 ms with BentoML's defaults, ~3 ms with tracing off and
single texts inferred on the event loop, as serving/service.py does; inference ~1.3 ms), and a too-low
`max_latency_ms` makes the batching dispatcher answer 503. So the defaults are one unbatched worker
(which can never answer 503) and `--tune` measures a small grid on the actual model and machine and
keeps the fastest error-free setting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError
from lifecycle.artifact import Artifact, sha256_file, stable_hash, write_json
from lifecycle.schema import Strict


def _service_dir() -> Path:
    """serving/ (service.py + bentofile.yaml): installed as lifecycle._service, or beside the package in
    a source tree put on sys.path without installing."""
    import importlib.util

    spec = importlib.util.find_spec("lifecycle._service")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[1] / "serving"


SERVICE_DIR = _service_dir()
CONFIG_ENV = "LIFECYCLE_SERVING_CONFIG"  # read by serving/service.py
STORED_SUBDIR = "model"  # inside a BentoML model-store entry (serving/service.py reads the same name)
TUNED_SUFFIX = ".serving.json"  # tuned settings + measurements, beside the served artifact or bundle
# One 200-character text per request: the load the hand-tuned figures in issue 10 were measured with.
SAMPLE_TEXT = ("Shares in the chip maker rose sharply on Tuesday after it reported record quarterly profits "
               "and raised its forecast for the year, citing strong demand for data centre processors worldwide.")


class ServingSettings(Strict):
    """How the service runs. Defaults are safe for any model; `lifecycle serve --tune` finds faster ones."""

    workers: int = Field(1, ge=1)  # processes, sharing one listening socket
    # With several workers, a keep-alive connection older than this is closed after its next response so
    # that the client reconnects to the less busy worker: left alone, the kernel may give every
    # connection of a few long-lived clients to one worker (serving/service.py). None: never.
    max_connection_age_s: float | None = Field(2.0, gt=0)
    ort_threads: int | None = Field(None, ge=1)  # onnxruntime threads per worker; None: cores // workers
    ort_spinning: bool = False  # spinning threads burn the cores that request handling needs
    batching: bool = False  # BentoML adaptive batching: 1.0-1.4x on CPU, and 503s if max_latency_ms is low
    max_batch_size: int = Field(32, ge=2)  # texts per batched model call
    max_latency_ms: int = Field(2000, gt=0)  # batching only: the dispatcher answers 503 past this estimate
    max_concurrency: int = Field(32, ge=1)  # requests in flight (split across workers); more get 429
    timeout_s: float = Field(30.0, gt=0)  # a request still running after this gets 504
    # A body still incomplete after this gets 408 and its connection is closed. Bodies take no
    # concurrency slot while they arrive, so a slow upload costs a connection, not the service.
    # timeout_s counts from the request's first byte too: set below this, its 504 comes first.
    body_timeout_s: float = Field(10.0, gt=0)
    max_texts: int = Field(64, ge=1)  # texts per request; more get 422
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413
    # A text longer than the model's max_length tokens: "truncate" (as in training and the edge bundle)
    # or "reject" with 422, for callers who must know that the model did not see the whole text.
    over_length: Literal["truncate", "reject"] = "truncate"
    access_log: bool = False  # one log line per request costs CPU at hundreds of requests/s
    tracing: bool = False  # BentoML's OpenTelemetry spans: ~1.1 ms of CPU per request; on for an exporter

    def resolved(self) -> dict:
        """As written for the service: ort_threads filled in."""
        threads = self.ort_threads or max(1, (os.cpu_count() or 1) // self.workers)
        return self.model_dump(mode="json") | {"ort_threads": threads}


# ------------------------------------------------------------------------------------------ what is served
@dataclass
class Served:
    path: Path  # export/quantize artifact directory, bundle directory or bundle zip
    name: str
    version: str  # the artifact hash: sha256 over its file hashes (Artifact.digest)
    gates: list = field(default_factory=list)
    root: Path | None = None  # where the service reads the files, when not `path`: an extracted bundle zip
    trusted_keys: list[str] | None = None  # public key PEMs: every worker verifies the bundle's signature

    @property
    def tuned_path(self) -> Path:
        return self.path.with_name(self.path.name + TUNED_SUFFIX)

    def service_model(self) -> dict:
        return {"path": str(self.root or self.path), "name": self.name, "version": self.version,
                "gates": self.gates, "source": str(self.path), "trusted_keys": self.trusted_keys}


def resolve(source: str | Path) -> Served:
    """A run directory (its last ONNX artifact), an export/quantize artifact, or an edge bundle."""
    source = Path(source).resolve()
    if (source / "pipeline.json").is_file():
        return resolve(_last_onnx_artifact(source))
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            manifest = json.loads(zf.read("manifest.json")) if "manifest.json" in zf.namelist() else {}
        return _bundle(source, manifest)
    if (source / "manifest.json").is_file() and "kind" in json.loads((source / "manifest.json").read_text()):
        art = Artifact.load(source)
        if art.kind != "onnx-model":
            raise LifecycleError(f"{source}: a {art.kind} artifact; serve an export or quantize artifact "
                                 "(onnx-model), its run directory, or a bundle")
        return Served(source, f"{source.parent.name}-{art.manifest['stage']}", art.digest,
                      art.manifest.get("gates", []))
    if (source / "model.onnx").is_file():
        manifest = json.loads((source / "manifest.json").read_text()) if (source / "manifest.json").is_file() else {}
        return _bundle(source, manifest)
    raise LifecycleError(f"{source}: nothing to serve; pass a run directory, an export/quantize artifact, "
                         "or a bundle made by `lifecycle bundle`")


def _bundle(path: Path, manifest: dict) -> Served:
    """A bundle written by `lifecycle bundle` names its artifact's hash and stage; it is served under
    the same name and version as that artifact. A directory without a manifest (made by hand) is
    versioned by its model file alone."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    files = manifest.get("files") or {"model.onnx": sha256_file(path / "model.onnx")}
    version = source.get("digest") or stable_hash(files)
    if manifest.get("pipeline") and source.get("stage"):
        name = f"{manifest['pipeline']}-{source['stage']}"
    else:
        name = manifest.get("name") or path.stem
    return Served(path, str(name), version, manifest.get("gates", []))


def _last_onnx_artifact(run_dir: Path) -> Path:
    stages = json.loads((run_dir / "pipeline.json").read_text())["pipeline"]["stages"]
    for stage in reversed(stages):
        art = run_dir / (stage.get("name") or stage["kind"])
        manifest = art / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("kind") == "onnx-model":
            return art
    raise LifecycleError(f"{run_dir}: no finished export or quantize stage to serve; run the pipeline first")


def load_settings(served: Served) -> ServingSettings:
    """Tuned settings beside the artifact when `--tune` wrote them, else the defaults."""
    if not served.tuned_path.is_file():
        return ServingSettings()
    try:
        return ServingSettings.model_validate(json.loads(served.tuned_path.read_text())["settings"])
    except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        raise LifecycleError(f"{served.tuned_path}: unusable serving settings ({exc}); fix or delete the file, "
                             "or rewrite it with `lifecycle serve --tune`") from None


def write_config(served: Served, settings: ServingSettings, path: Path | None = None) -> Path:
    """The one file serving/service.py reads (named by $LIFECYCLE_SERVING_CONFIG)."""
    if path is None:
        fd, name = tempfile.mkstemp(prefix="lifecycle-serving-", suffix=".json")
        os.close(fd)
        path = Path(name)
    write_json(path, {"model": served.service_model(), "settings": settings.resolved()})
    return path


# ------------------------------------------------------------------------------------- the server process
def bentoml_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` on a config file, in a session of its own so that stopping it stops its workers.

        with Server(config_path) as server:   # waits for /readyz
            httpx.post(server.url + "/classify", json={"texts": ["..."]})
    """

    def __init__(self, config: Path, host: str = "127.0.0.1", port: int | None = None,
                 log: Path | None = None, startup_timeout_s: float = 120.0):
        self.config, self.host, self.port = Path(config), host, port or free_port()
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="lifecycle-serve-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, **{CONFIG_ENV: str(self.config)}, BENTOML_DO_NOT_TRACK="true", ORT_DISABLE_TELEMETRY="1")
        cmd = bentoml_command("serve", "service:Classifier", "--working-dir", str(SERVICE_DIR),
                              "--host", self.host, "--port", str(self.port))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:  # Ctrl-C while waiting included: never leave a server behind
            self.stop()
            raise

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LifecycleError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # trust_env=False: loopback traffic must not go to an HTTP(S)_PROXY from the environment
                if httpx.get(self.url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise LifecycleError(f"bentoml serve not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the whole session (server and workers), SIGKILL after grace_s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds so far, per process: the server (its pid) and each worker."""
        import psutil  # a bentoml dependency

        root = psutil.Process(self.proc.pid)
        out = {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return out

    def worker_shares(self, before: dict[int, float], after: dict[int, float]) -> list[float]:
        """Each worker's share of the workers' CPU time between two cpu_seconds() readings."""
        used = [after[pid] - before.get(pid, 0.0) for pid in after if pid != self.proc.pid]
        total = sum(used)
        return [u / total for u in used] if total > 0 else []

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else ""


# ------------------------------------------------------------------------------------------ loopback load
@dataclass
class LoadResult:
    statuses: list[int]  # per request, in completion order; 0 = connection error
    latencies_ms: list[float]
    bodies: dict[int, bytes]  # request index -> body, when kept
    seconds: float

    def summary(self) -> dict:
        import numpy as np

        ok = [t for s, t in zip(self.statuses, self.latencies_ms) if s == 200]
        pct = np.percentile(ok, [50, 95, 99]) if ok else [float("nan")] * 3
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[str(s)] = counts.get(str(s), 0) + 1
        return {"requests": len(self.statuses), "ok": len(ok), "error_count": len(self.statuses) - len(ok),
                "status_counts": counts, "requests_per_s": len(ok) / self.seconds if self.seconds else 0.0,
                "http_latency_p50_ms": float(pct[0]), "http_latency_p95_ms": float(pct[1]),
                "http_latency_p99_ms": float(pct[2]), "seconds": self.seconds}


def json_request(port: int, payload: dict, path: str = "/classify") -> bytes:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def run_load(port: int, requests: list[bytes], clients: int, duration_s: float | None = None,
             max_requests: int | None = None, keep_bodies: bool = False, host: str = "127.0.0.1") -> LoadResult:
    """`clients` keep-alive connections, each sending the next request as soon as the last one is answered,
    until max_requests were sent or duration_s passed. Raw asyncio sockets rather than an HTTP client
    library: on 2 shared cores the load generator's own CPU cost must stay small next to the server's."""
    import asyncio

    if duration_s is None and max_requests is None:
        raise ValueError("bound the load: give duration_s, max_requests or both")
    statuses: list[int] = []
    latencies: list[float] = []
    bodies: dict[int, bytes] = {}
    counter = iter(range(max_requests if max_requests is not None else sys.maxsize))

    async def client(deadline: float) -> None:
        reader = writer = None
        for i in counter:
            if time.perf_counter() > deadline:
                return
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body, close = await _read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                status, body, close = 0, b"", True
                latencies.append(float("nan"))
            statuses.append(status)
            if keep_bodies:
                bodies[i] = body
            if close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(start + (duration_s or 1e9)) for _ in range(clients)))
        return time.perf_counter() - start

    try:  # uvloop (with uvicorn's httptools, what the server uses too) halves the client's CPU per request
        import uvloop

        seconds = uvloop.run(main())
    except ImportError:
        seconds = asyncio.run(main())
    return LoadResult(statuses, latencies, bodies, seconds)


async def _read_response(reader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")  # one read for the whole head: the client's CPU counts too
    lines = head.split(b"\r\n")
    status, length, close = int(lines[0].split()[1]), 0, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, await reader.readexactly(length), close


# ------------------------------------------------------------------------------------------------ tuning
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


# ------------------------------------------------------------------------------------------- CLI commands
def serve(source, host: str = "127.0.0.1", port: int = 3000, tune: bool = False,
          trusted_keys: list | None = None) -> int:
    """`lifecycle serve`: check that the model opens, then run `bentoml serve` in the foreground until it
    stops; returns its exit status. A refused bundle ends here, before any server starts: BentoML would
    restart a worker that cannot open its model forever. With `trusted_keys` (public key PEM files) every
    worker also verifies the bundle's signature when it opens the model, not only this check."""
    served = resolve(source)
    if trusted_keys:
        served.trusted_keys = [Path(k).read_text() for k in trusted_keys]
    with checked(served):
        settings = tune_settings(served) if tune else load_settings(served)
        config = write_config(served, settings)
        try:
            where = f"tuned, from {served.tuned_path}" if served.tuned_path.is_file() else "defaults"
            print(f"serving {served.name} (version {served.version[:12]}) on http://{host}:{port}; "
                  f"settings: {where}", flush=True)
            env = dict(os.environ, **{CONFIG_ENV: str(config)}, BENTOML_DO_NOT_TRACK="true",
                       ORT_DISABLE_TELEMETRY="1")
            return _foreground(bentoml_command("serve", "service:Classifier", "--working-dir", str(SERVICE_DIR),
                                               "--host", host, "--port", str(port)), env)
        finally:
            config.unlink(missing_ok=True)


@contextlib.contextmanager
def checked(served: Served):
    """Open the model once as the service will (lifecycle.edge.Predictor.open: every check a bundle gets),
    raising its BundleError with the bundle's own path in it. A zip is then extracted once, here, for
    every worker to read (`served.root`), and removed on exit: a worker killed at shutdown never
    removed its own extraction. The workers verify that directory against the manifest checked here."""
    from lifecycle.edge import EXTRACT_PREFIX, MANIFEST, BundleError, Predictor, _extract

    try:
        manifest = Predictor.open(served.path).manifest  # dropped at once: it only proves the model opens
    except BundleError as exc:  # a zip's extracted (and already removed) copy -> the zip
        tmp = re.escape(tempfile.gettempdir())
        raise BundleError(re.sub(rf"{tmp}/{EXTRACT_PREFIX}[^/\s]*", str(served.path), str(exc))) from None
    if not served.path.is_file():
        yield served
        return
    served.root = _extract(served.path)
    try:
        if json.loads((served.root / MANIFEST).read_text()) != manifest:
            raise BundleError(f"{served.path}: changed while it was being opened; serve it again")
        yield served
    finally:
        shutil.rmtree(served.root, ignore_errors=True)
        served.root = None


def _foreground(cmd: list[str], env: dict) -> int:
    """Run `cmd` in a session of its own and wait for it, forwarding SIGINT, SIGTERM and SIGHUP to that
    whole session exactly once (a Ctrl-C or a supervisor's SIGTERM reaches only this process, which is
    then alive to clean up after the server: see checked())."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:  # this process is going away for another reason: stop the server too
            forward(signal.SIGTERM, None)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                forward(signal.SIGKILL, None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def build(source) -> str:
    """`lifecycle build`: the model into BentoML's model store (version = artifact hash), then a Bento."""
    import bentoml
    from bentoml.exceptions import NotFound

    served = resolve(source)
    settings = load_settings(served)
    name = re.sub(r"[^a-z0-9_.-]+", "-", served.name.lower()).strip("-.")[:63] or "lifecycle-model"
    tag = f"{name}:{served.version[:32]}"  # BentoML versions are at most 63 characters: a 128-bit prefix
    try:
        bentoml.models.get(tag)
    except NotFound:
        with bentoml.models.create(tag, labels={"source": "lifecycle"},
                                   metadata={"artifact_hash": served.version, "gates": json.dumps(served.gates)}) as model:
            # In a subdirectory: BentoML adds model.yaml beside it, and lifecycle.edge refuses a
            # directory holding files its manifest does not list.
            _copy_model(served.path, Path(model.path) / STORED_SUBDIR)
    ctx = Path(tempfile.mkdtemp(prefix="lifecycle-bento-"))
    try:
        shutil.copy2(SERVICE_DIR / "service.py", ctx / "service.py")
        shutil.copy2(SERVICE_DIR / "bentofile.yaml", ctx / "bentofile.yaml")
        (ctx / "lifecycle").mkdir()
        for module in ("__init__.py", "edge.py"):  # the service needs only lifecycle.edge
            shutil.copy2(Path(__file__).with_name(module), ctx / "lifecycle" / module)
        model_cfg = {k: v for k, v in served.service_model().items() if k != "path"} | {"tag": tag}
        write_json(ctx / "serving.json", {"model": model_cfg, "settings": settings.resolved()})
        out = subprocess.run(bentoml_command("build", ".", "--output", "tag"), cwd=ctx, capture_output=True,
                             text=True, env=dict(os.environ, BENTOML_DO_NOT_TRACK="true"))
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    found = re.search(r"__tag__:(\S+)", out.stdout)
    if out.returncode != 0 or not found:
        raise LifecycleError(f"bentoml build failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return found.group(1)


def _copy_model(src: Path, dst: Path) -> None:
    predictor = None
    if src.is_file():  # a bundle zip: its members, checked as lifecycle.edge checks them
        from lifecycle.edge import Predictor

        predictor = Predictor.open(src)  # holds the extracted files until the copy is done
        src = predictor.root
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst / f.relative_to(src))
    del predictor
