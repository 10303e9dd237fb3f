"""The `bentoml serve` process: started on a config file in a session of its own (so that stopping it
stops its workers), waited for until /readyz answers, stopped with SIGTERM then SIGKILL; or run in the
foreground for `lifecycle serve`, with signals forwarded."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.edge import BUNDLE_REFUSED
from lifecycle.serving.settings import CONFIG_ENV, SERVICE_DIR


def bentoml_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", *args]


def service_command(config: Path, host: str, port: int, home: Path) -> tuple[list[str], dict]:
    """`bentoml serve` on serving/service.py, and its environment: the config file it reads, no telemetry, and
    a BentoML home of its own (`home`, an empty directory the caller removes after the server stops): every
    `bentoml serve` empties the Prometheus directory under its home as it starts, so two servers sharing one
    would wipe each other's metrics (a running server's lifecycle_requests_admitted read 0). The service reads
    its model by path, never from the home's model store."""
    env = dict(os.environ, **{CONFIG_ENV: str(config)}, BENTOML_DO_NOT_TRACK="true", ORT_DISABLE_TELEMETRY="1",
               BENTOML_HOME=str(home))
    cmd = bentoml_command("serve", "service:Classifier", "--working-dir", str(SERVICE_DIR),
                          "--host", host, "--port", str(port))
    return cmd, env


def bound_port(proc: subprocess.Popen) -> int | None:
    """The HTTP port of a `bentoml serve` (or `lifecycle serve`) started with `--port 0`, once it is bound
    (None before): the kernel chose it as the socket was bound, so no other process can take it first, as it
    could a port found free beforehand. The arbiter binds it and every worker inherits it, so it is the one
    listening port held by more than one of the server's processes (circus's own sockets are the arbiter's)."""
    import psutil  # a bentoml dependency

    holders: dict[int, int] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                for port in {c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}:
                    holders[port] = holders.get(port, 0) + 1
    shared = [port for port, n in holders.items() if n > 1]
    return shared[0] if len(shared) == 1 else None


def listening_port(proc: subprocess.Popen, timeout_s: float = 90.0) -> int:
    """bound_port(), waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if port := bound_port(proc):
            return port
        time.sleep(0.1)
    raise LifecycleError(f"no port shared by process {proc.pid}'s server and workers after {timeout_s:.0f} s "
                         f"(exit code {proc.poll()})")


class Server:
    """`bentoml serve` on a config file, in a session of its own so that stopping it stops its workers.

        with Server(config_path) as server:   # waits for /readyz
            httpx.post(server.url + "/classify", json={"texts": ["..."]})
    """

    def __init__(self, config: Path, host: str = "127.0.0.1", port: int | None = None,
                 log: Path | None = None, startup_timeout_s: float = 120.0):
        # no port named: port 0, the one the kernel binds for the server (known once bound: bound_port())
        self.config, self.host, self.port = Path(config), host, port
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="lifecycle-serve-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.home: Path | None = None  # the server's BentoML home (see service_command), removed when it stops

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start and wait for /readyz."""
        self.home = Path(tempfile.mkdtemp(prefix="lifecycle-bentoml-"))
        cmd, env = service_command(self.config, self.host, self.port or 0, self.home)
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
            if refusal := self.refusal():
                raise LifecycleError(f"bentoml serve will not get ready: {refusal}")
            self.port = self.port or bound_port(self.proc)
            try:
                # trust_env=False: loopback traffic must not go to an HTTP(S)_PROXY from the environment
                if self.port and httpx.get(self.url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # a refused connect costs ~1 ms; the server is ready ~1.5 s after start
        raise LifecycleError(f"bentoml serve not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the whole session (server and workers), SIGKILL after grace_s; then its BentoML home goes."""
        try:
            return self._stop(grace_s)
        finally:
            if self.home is not None and (self.proc is None or self.proc.poll() is not None):
                shutil.rmtree(self.home, ignore_errors=True)
                self.home = None

    def _stop(self, grace_s: float) -> int | None:
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

    def refusal(self) -> str | None:
        """The line a worker wrote when it refused the bundle (bad signature, tampered file), if any."""
        if not self.log.is_file():
            return None
        with open(self.log, errors="replace") as f:
            return next((line.strip() for line in f if line.startswith(BUNDLE_REFUSED)), None)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else ""


def foreground(cmd: list[str], env: dict) -> int:
    """Run `cmd` in a session of its own and wait for it, forwarding SIGINT, SIGTERM and SIGHUP to that
    whole session exactly once (a Ctrl-C or a supervisor's SIGTERM reaches only this process, which is
    then alive to clean up after the server: see source.checked())."""
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
