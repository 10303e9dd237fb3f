"""What is served: a run directory (its last ONNX artifact), an export/quantize artifact, or an edge
bundle (directory or zip), with the name and version the service reports. `last_onnx_artifact` is also
what `lifecycle bundle` packs from a run directory."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.artifact import Artifact, sha256_file, stable_hash
from lifecycle.serving.settings import TUNED_SUFFIX


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


def last_onnx_artifact(run_dir: Path) -> Path:
    """The directory of a run's last finished stage (pipeline order, from pipeline.json) that wrote an
    onnx-model artifact. Only its manifest's kind is read here: the caller loads (and so verifies) the
    one artifact it uses, not every stage after it."""
    stages = json.loads((run_dir / "pipeline.json").read_text())["pipeline"]["stages"]
    for stage in reversed(stages):
        art = run_dir / (stage.get("name") or stage["kind"])
        manifest = art / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("kind") == "onnx-model":
            return art
    raise LifecycleError(f"{run_dir}: the run has no finished onnx-model stage (export or quantize); "
                         "run the pipeline first")


def resolve(source: str | Path) -> Served:
    """A run directory (its last ONNX artifact), an export/quantize artifact, or an edge bundle."""
    source = Path(source).resolve()
    if (source / "pipeline.json").is_file():
        return resolve(last_onnx_artifact(source))
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
