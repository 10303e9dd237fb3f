"""Artifacts: a directory plus `manifest.json`, written atomically and verified when loaded.

A stage builds its artifact in `<name>.tmp/`; only a complete directory, manifest last, is renamed to
`<name>/`. So a crash leaves a `.tmp` that the next run discards, never a half-written artifact that
looks done. The manifest lists the sha256 of every file, and loading refuses a directory whose files
changed, naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import LifecycleError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 8 << 20  # as lifecycle.edge's (which imports nothing from lifecycle): tens of KB is usual


class ArtifactError(LifecycleError):
    """A missing, incomplete or tampered artifact."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file below root (manifest excluded), keyed by POSIX relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ArtifactError(f"{path}: symlinks are not allowed in an artifact")
        if path.is_file() and path.name != MANIFEST:
            out[path.relative_to(root).as_posix()] = sha256_file(path)
    return out


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # a full disk: no half-written .part left behind
            tmp.unlink(missing_ok=True)
        raise


def _jsonable(obj: Any):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class Artifact:
    """A verified artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        """The family: hf-model (a model directory), onnx-model (what lifecycle.edge opens), service-check."""
        return self.manifest["kind"]

    @property
    def holds(self) -> str | None:
        """What the model is (lifecycle.schema.Holds: masked-lm, classifier, onnx-encoder...); None for an
        artifact written before artifacts said so."""
        return self.manifest.get("holds")

    @property
    def cache_key(self) -> str:
        return self.manifest["cache_key"]

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})

    @property
    def digest(self) -> str:
        """Hash of the artifact's content (all file hashes): its version, e.g. for serving."""
        return stable_hash(self.manifest["files"])

    def file(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise ArtifactError(f"{self.path}: artifact has no file '{rel}'")
        return self.path / rel

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{path}: not an artifact (no {MANIFEST})")
        try:
            if mpath.stat().st_size > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"{mpath}: over {MAX_MANIFEST_BYTES} bytes, more than any manifest holds")
            manifest = json.loads(mpath.read_bytes())
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ArtifactError(f"{mpath}: unreadable manifest ({exc}); re-run the stage that wrote it") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str) \
                or not isinstance(manifest.get("files"), dict):
            raise ArtifactError(f"{mpath}: not an artifact manifest (a JSON object with 'kind' and 'files'); re-run "
                                "the stage that wrote it")
        art = cls(path, manifest)
        if verify:
            art.verify()
        return art

    def verify(self) -> None:
        expected: dict[str, str] = self.manifest.get("files", {})
        for rel, digest in expected.items():
            f = self.path / rel
            if not f.is_file():
                raise ArtifactError(f"{f}: listed in the manifest but missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{f}: changed since the artifact was written (sha256 mismatch)")
        extra = set(hash_tree(self.path)) - set(expected)
        if extra:
            raise ArtifactError(f"{self.path}: files not in the manifest: {sorted(extra)}")


def inside(root: Path, path: Path) -> Path:
    """`path`, refused unless it is an entry of `root` once symlinks and `..` are resolved: every
    directory a run writes or replaces is checked before it is touched."""
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(root)):
        raise LifecycleError(f"{path}: not inside the run directory {root} (a symlink or a name that leaves it); "
                             "remove it or choose another name")
    return path


def replaceable(path: Path) -> Path:
    """`path`, refused when something other than an artifact (a user's folder or file, a symlink) is there."""
    if path.is_symlink() or (path.exists() and not (path / MANIFEST).is_file()):
        raise ArtifactError(f"{path}: exists and is not an artifact (no {MANIFEST}); move it away or give the stage "
                            "another name")
    return path


def commit(tmp_dir: Path, final_dir: Path, manifest: dict[str, Any]) -> Artifact:
    """Seal tmp_dir (hash files, write the manifest last) and move it to final_dir atomically. An
    existing final_dir is replaced only when it is an artifact: a folder of someone else's is refused,
    never renamed away and deleted."""
    old = replaceable(final_dir.with_name(final_dir.name + ".old"))
    replaceable(final_dir)
    manifest = dict(manifest, files=hash_tree(tmp_dir))
    write_json(tmp_dir / MANIFEST, manifest)
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)  # two renames: the final name is never a partial directory
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)
    return Artifact(final_dir, manifest)


def update_manifest(art: Artifact, **fields: Any) -> None:
    """Record results computed after sealing (gate verdicts); file hashes are left untouched."""
    art.manifest.update(fields)
    write_json(art.path / MANIFEST, art.manifest)


def gates_verdict(gates: list) -> dict:
    """The verdict of a model known only by its own gate results (an artifact or bundle outside a run)."""
    failed = [g for g in gates if isinstance(g, dict) and not g.get("passed") and g.get("on_fail", "stop") == "stop"]
    reasons = [f"{g.get('metric')}: {' '.join(str(g.get('message') or g.get('bound')).split())}" for g in failed]
    return {"passed": not reasons, "reasons": reasons, "override": None}
