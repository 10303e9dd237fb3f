"""Where a number was measured: hardware, thread count, library versions, and the exact tree (git commit,
whether it was clean, and sha256 hashes of the package sources read from the files themselves, so a
source tarball without .git still says what it holds)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
# What a benchmark measures: the package, the server, and the shipped pipeline files. A result recorded
# with other hashes than the tree's describes other code (tests/test_provenance.py says which files).
SOURCES = ("lifecycle/**/*.py", "serving/**/*.py", "pipelines/**/*.yaml")
# Written by the benchmarks themselves: a recording run must not count its own results as a dirty tree.
NOT_SOURCE = ":(exclude)benchmarks/results"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    return (_git("rev-parse", "HEAD") or "").strip() or None


def dirty() -> bool | None:
    """Whether the tree differs from its commit (changed, staged or untracked files outside
    benchmarks/results); None without git."""
    out = _git("status", "--porcelain", "--", ".", NOT_SOURCE)
    return None if out is None else bool(out.strip())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_hashes() -> dict[str, str]:
    """sha256 of every source file (SOURCES, hidden files left out), by path relative to the repository."""
    files = {p for pattern in SOURCES for p in ROOT.glob(pattern)
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)}
    return {p.relative_to(ROOT).as_posix(): sha256(p) for p in sorted(files)}


def sources_sha256(hashes: dict[str, str]) -> str:
    """One hash of `source_hashes()`: equal exactly when every path and content is."""
    return hashlib.sha256("".join(f"{path}\0{h}\n" for path, h in sorted(hashes.items())).encode()).hexdigest()


def provenance(files: list[Path]) -> dict:
    """The exact tree a result was measured on: commit, dirty flag, the sha256 of each of `files` (the
    benchmark scripts the run loaded, and what else it measures) and of the package sources."""
    sources = source_hashes()
    return {"git_commit": git_commit(), "dirty": dirty(),
            "files": {p.resolve().relative_to(ROOT).as_posix(): sha256(p) for p in sorted(set(files))},
            "sources_sha256": sources_sha256(sources), "sources": sources}


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
        "git_commit": git_commit(),
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
