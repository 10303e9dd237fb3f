"""What a bundle or model directory holds, and its verification: every file against manifest.json's
sha256, no file the manifest does not list, no symlinks. The manifest is read within a size limit."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

MODEL, TOKENIZER, LABELS, SCHEMA, MANIFEST = "model.onnx", "tokenizer.json", "labels.json", "schema.json", "manifest.json"
REQUIRED = (MODEL, LABELS, SCHEMA)  # plus the preprocessor schema.json names (required_files)
SIGNATURE = "manifest.sig"  # signature over manifest.json: the one file the manifest cannot list
# manifest.json holds hashes, metrics, gate results and a few recorded predictions: tens of KB. Parsing
# JSON costs several times its size in memory, so a manifest is refused above this before it is read.
MAX_MANIFEST_BYTES = 8 << 20
DRIVE = re.compile(r"^[A-Za-z]:")  # a Windows drive letter: a path that would leave the bundle


class BundleError(Exception):
    """A bundle that is incomplete, tampered with, or points outside itself."""


# A serving worker that refuses its bundle writes this line before it fails, so that whoever waits for
# the server (lifecycle.serving.Server) stops waiting at once with the reason: BentoML keeps the server
# up and restarts the worker, which would refuse again, until the startup timeout.
BUNDLE_REFUSED = "lifecycle: bundle refused:"


def verify(root: Path) -> dict:
    """Check every file listed in manifest.json against its sha256 and refuse files it does not
    list (an unlisted file could be swapped in unnoticed); returns the manifest."""
    root = Path(root)
    manifest = read_manifest(root / MANIFEST)
    files: dict[str, str] = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BundleError(f"{root / MANIFEST}: 'files' is not a mapping of file names to sha256; write the bundle "
                          "again with `lifecycle bundle`")
    for name in required_files(_read_schema(root)):
        if name not in files:
            raise BundleError(f"{root}: the manifest does not list {name}")
    for rel, digest in files.items():
        f = root / rel
        if f.is_symlink() or not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing (or a symlink)")
        if _sha256(f) != digest:
            raise BundleError(f"{f}: does not match its sha256 in the manifest (tampered or corrupt)")
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() or (f.is_file() and rel not in (MANIFEST, SIGNATURE) and rel not in files):
            raise BundleError(f"{f}: not listed in the manifest; refusing a bundle with unlisted files or symlinks")
    return manifest


def read_manifest(path: Path, data: bytes | None = None) -> dict:
    """A bundle's or artifact's manifest.json (`data`: its bytes, already read within the limit), refused in
    one line when it is over MAX_MANIFEST_BYTES, not JSON, or not a JSON object."""
    try:
        if data is None:
            if Path(path).stat().st_size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path}: over {MAX_MANIFEST_BYTES} bytes, more than any manifest holds")
            data = Path(path).read_bytes()
        manifest = json.loads(data)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: a JSON {type(manifest).__name__}, not a manifest (a JSON object)")
    return manifest


def preprocessor_file(schema: dict) -> str | None:
    """The file that turns raw input into the graph's feeds, as schema.json names it: tokenizer.json
    for a text model (the default: older artifacts do not name it), preprocessing.json for a table,
    preprocessor_config.json for images; None (schema.json "preprocessor": null) for inputs that need
    none, such as a plug-in kind's numbers fed to the graph as they are (lifecycle.edge.kinds)."""
    return schema.get("preprocessor", TOKENIZER)


def required_files(schema: dict) -> tuple[str, ...]:
    """What a model directory or bundle must hold: REQUIRED and its preprocessor file, if any."""
    return (*REQUIRED, *filter(None, [preprocessor_file(schema)]))


def _read_schema(root: Path) -> dict:
    try:
        schema = json.loads((Path(root) / SCHEMA).read_text())
    except (OSError, ValueError):
        return {}  # a missing or broken schema.json is refused with REQUIRED's message
    return schema if isinstance(schema, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
