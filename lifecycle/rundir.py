"""The run directory's guards: one writer at a time (a lock naming its holder), and file-system faults
(a full disk, a read-only mount, no permission) turned into one line naming the path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle import distributed as dist

RESOLVED = "pipeline.json"  # the resolved config, written into the run directory
LOCK = ".lock"  # held (flock) by the one `lifecycle run` writing the run directory; says who holds it


@contextlib.contextmanager
def writer(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for this run: a second `lifecycle run` on it is refused at once, naming
    the holder, instead of building artifacts from two runs' bytes. flock is released by the kernel
    when the process ends however it ends (a kill -9 leaves a lock file that blocks no one). Only rank
    0 of a distributed run takes it: the other ranks are the same run, and wait until it holds the
    directory (their build directories would make it look like someone else's). If rank 0 is refused,
    the launcher ends the others."""
    if dist.rank() != 0:
        dist.barrier()
        yield
        return
    # (A symlink to a folder is fine: a run directory on a bigger disk. Writes are checked against its target.)
    if (run_dir.exists() or run_dir.is_symlink()) and not run_dir.is_dir():
        raise LifecycleError(f"{run_dir}: exists and is not a directory; choose another --workdir or pipeline name")
    if run_dir.is_dir() and not (run_dir / RESOLVED).is_file() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise LifecycleError(f"{run_dir}: not empty and not a run directory (no {RESOLVED}); a run writes and replaces "
                             "files there: choose another --workdir or pipeline name, or move the files away")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            try:
                holder = json.loads(lock.read())
                who = (f"pid {holder['pid']} on {holder['host']} since {time.ctime(holder['started'])}: "
                       f"{holder['command']}")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise LifecycleError(f"{run_dir}: another run is writing it ({who}); wait for it to end or stop it, "
                                 "or run with another --workdir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                               "command": " ".join(sys.argv)}))
        lock.flush()
        dist.barrier()
        yield  # closing the file releases the lock


# Errors of the file system a user can fix (free space, permissions, a read-only mount), as OSError
# numbers and as the text libraries put in the errors they wrap them in (safetensors: SafetensorError).
FAULTS = {errno.ENOSPC: ("no space left on the device", "free space there"),
          errno.EDQUOT: ("disk quota exceeded", "free space there"),
          errno.EROFS: ("read-only file system", "mount it read-write or run with another --workdir"),
          errno.EACCES: ("permission denied", "give this user write access or run with another --workdir"),
          errno.EPERM: ("operation not permitted", "give this user write access or run with another --workdir")}
FAULT_TEXT = {"No space left": errno.ENOSPC, "Disk quota": errno.EDQUOT, "Read-only file system": errno.EROFS,
              "Permission denied": errno.EACCES}
FULL_BELOW = 16 << 20  # bytes free under which a write error is taken for a full disk


def disk_fault(exc: BaseException, where: Path) -> LifecycleError | None:
    """A one-line LifecycleError naming the path for a file-system fault anywhere in exc's chain, else None."""
    seen = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        if code not in FAULTS:
            code = next((c for text, c in FAULT_TEXT.items() if text in str(seen)), None)
        if code is not None:
            return _fault(getattr(seen, "filename", None) or where, code, "")
        seen = seen.__cause__ or seen.__context__
    # torch.save says neither errno nor reason on a full disk ("unexpected pos 64 vs 0"): an error while
    # the file system has (almost) no space left is taken for one. A bug that strikes on a nearly full
    # disk is then reported as the full disk, which still needs freeing first.
    existing = next(p for p in (Path(where), *Path(where).parents) if p.exists())
    if shutil.disk_usage(existing).free < FULL_BELOW:
        return _fault(where, errno.ENOSPC, f" ({type(exc).__name__} while writing)")
    return None


def _fault(path, code: int, detail: str) -> LifecycleError:
    reason, fix = FAULTS[code]
    return LifecycleError(f"{path}: {reason}{detail}; {fix}, then run again (finished stages are kept)")


@contextlib.contextmanager
def disk_faults(where: Path) -> Iterator[None]:
    try:
        yield
    except LifecycleError:
        raise
    except Exception as exc:
        if (fault := disk_fault(exc, where)) is None:
            raise
        raise fault from None
