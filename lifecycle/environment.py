"""Where a number was measured: hardware, thread count, library versions, git commit."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

LIBRARIES = ("torch", "transformers", "peft", "onnx", "onnxruntime", "optimum", "optimum-onnx", "bentoml", "evaluate", "datasets")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:  # closed on the early return (a ResourceWarning otherwise)
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(__file__))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def threads() -> int:
    """Intra-op threads torch would use (read without importing torch when it is not loaded)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


def gpu() -> str | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def environment() -> dict:
    return {
        "cpu": cpu_model(),
        "isa": isa_flags(),
        "loadavg": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "threads": threads(),
        "gpu": gpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions(),
        "git_commit": _git_commit(),
    }


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx_vnni", "fma", "neon", "asimd")


@functools.lru_cache(maxsize=1)
def isa_flags() -> list[str]:
    """The instruction-set extensions that change how fast (and, for int8 without VNNI, how exactly) a
    kernel runs; read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def fingerprint(threads: int | None = None) -> dict:
    """Recorded beside every latency: what machine, how many threads, and how busy it was."""
    return {"cpu": cpu_model(), "isa": isa_flags(), "cpu_count": os.cpu_count(), "threads": threads or os.cpu_count(),
            "loadavg": list(os.getloadavg())}


def make_deterministic(seed: int) -> None:
    """Seeds everything and asks torch for deterministic kernels (identical CPU artifacts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from transformers import enable_full_determinism

    enable_full_determinism(seed, warn_only=True)
