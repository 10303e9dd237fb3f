"""A bundle zip extracted into a fresh temp directory, safely: nothing outside it, no symlinks or special
files, and sizes bounded before and while writing; and its manifest read without extracting anything."""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .bundle import DRIVE, MANIFEST, MAX_MANIFEST_BYTES, BundleError, read_manifest

# Zip extraction limits. A deflated member can expand ~1000x (a 1 MB zip held a 300 MB member), so sizes
# are checked from the zip's directory before anything is written and counted again while writing:
# the directory can lie (Python's zipfile stops at the declared size, then fails the CRC check).
# Weights compress to ~1.1x, tokenizer.json to ~4x: 100x is refused, for members over 1 MiB (small files,
# labels or a schema, may compress far better and cost nothing). The ratio is also checked over the
# whole archive, because 400 members just under 1 MiB each (a 453 KB zip expanding to ~400 MB) pass every
# per-member check: a real bundle is dominated by its weights, so its total ratio stays near theirs. The
# trade-off: a model whose weights are mostly zeros (>99% sparse, stored dense) is refused; such a model
# compresses its weights itself. MAX_MEMBERS is far above what any bundle holds (~8 files; external data
# saved one file per tensor is a few hundred) and bounds the work the directory alone can cause.
MAX_MEMBER_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO, RATIO_FROM_BYTES = 100, 1 << 20
MAX_MEMBERS = 4096
EXTRACT_PREFIX = "lifecycle-bundle-"
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error)


def _extract(zip_path: Path, max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES,
             max_ratio: float = MAX_RATIO) -> Path:
    """Extract a bundle into a fresh temp directory, refusing members that would land outside it
    (absolute, `..`, drive letters, backslashes), symlinks, special files, duplicate names, and sizes
    over the limits above (per member, in total, compression ratio; also more than the free disk)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = _checked_members(zip_path, zf, max_member_bytes, max_total_bytes, max_ratio)
            out = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX))
            try:
                total = 0
                for info in infos:
                    total += _write_member(zip_path, zf, info, out / info.filename, max_member_bytes, max_ratio)
                    if total > max_total_bytes:
                        raise BundleError(f"{zip_path}: members expand to more than {max_total_bytes} bytes")
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
    except (*_ZIP_ERRORS, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:  # the last three: 'a' and 'a/b'
        raise BundleError(f"{zip_path}: not a readable bundle zip ({exc}); write it again with "
                          "`lifecycle bundle`") from None
    return out


def zip_manifest(zip_path: Path) -> dict:
    """A bundle zip's manifest.json, read without extracting anything: its size is checked in the zip's
    directory first (and zipfile reads no more than that size); {} when the zip has none."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if MANIFEST not in zf.namelist():
                return {}
            info = zf.getinfo(MANIFEST)
            _check_manifest_size(zip_path, info.file_size)
            data = zf.read(info)
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{zip_path}: not a readable bundle zip ({exc}); write it again with "
                          "`lifecycle bundle`") from None
    return read_manifest(f"{zip_path}:{MANIFEST}", data)


def _check_manifest_size(zip_path: Path, size: int) -> None:
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{zip_path}: its {MANIFEST} expands to {size} bytes; the limit is {MAX_MANIFEST_BYTES}")


def _checked_members(zip_path: Path, zf: zipfile.ZipFile, max_member_bytes: int, max_total_bytes: int,
                     max_ratio: float) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{zip_path}: {len(infos)} members; a bundle holds at most {MAX_MEMBERS}")
    names, total, compressed = set(), 0, 0
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        unsafe = (name.startswith("/") or "\\" in name or DRIVE.match(name) or ".." in PurePosixPath(name).parts
                  or "\x00" in name)
        if unsafe or (kind and kind not in (stat.S_IFREG, stat.S_IFDIR)):
            what = "a symlink or special file" if not unsafe else "written outside the bundle"
            raise BundleError(f"{zip_path}: member '{name}' would be {what}")
        if name in names:
            raise BundleError(f"{zip_path}: member '{name}' appears twice")
        names.add(name)
        _check_size(zip_path, name, info.file_size, info.compress_size, max_member_bytes, max_ratio)
        if name == MANIFEST:
            _check_manifest_size(zip_path, info.file_size)
        total += info.file_size
        compressed += info.compress_size
    if total > max_total_bytes:
        raise BundleError(f"{zip_path}: members expand to {total} bytes; the limit is {max_total_bytes}")
    if total > RATIO_FROM_BYTES and total > max_ratio * max(compressed, 1):
        raise BundleError(f"{zip_path}: members expand {total / max(compressed, 1):.0f}x in all ({compressed} -> "
                          f"{total} bytes); the limit is {max_ratio:g}x (a zip bomb?)")
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if total > free:
        raise BundleError(f"{zip_path}: members expand to {total} bytes, more than the {free} bytes free in "
                          f"{tempfile.gettempdir()}")
    return infos


def _check_size(zip_path: Path, name: str, size: int, compressed: int, max_member_bytes: int,
                max_ratio: float) -> None:
    if size > max_member_bytes:
        raise BundleError(f"{zip_path}: member '{name}' expands to {size} bytes; the limit is {max_member_bytes}")
    if size > RATIO_FROM_BYTES and size > max_ratio * max(compressed, 1):
        raise BundleError(f"{zip_path}: member '{name}' expands {size / max(compressed, 1):.0f}x "
                          f"({compressed} -> {size} bytes); the limit is {max_ratio:g}x (a zip bomb?)")


def _write_member(zip_path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                  max_member_bytes: int, max_ratio: float) -> int:
    """Copy one member, counting what it really expands to; returns the bytes written."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while block := src.read(1 << 20):
            written += len(block)
            if written > info.file_size:
                raise BundleError(f"{zip_path}: member '{info.filename}' holds more than the {info.file_size} "
                                  "bytes its header declares")
            _check_size(zip_path, info.filename, written, info.compress_size, max_member_bytes, max_ratio)
            dst.write(block)
    return written
