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
from lifecycle.artifact import Artifact, gates_verdict, sha256_file, stable_hash

TUNED_SUFFIX = ".serving.json"  # tuned settings + measurements, beside the served artifact or bundle


@dataclass
class Served:
    path: Path  # export/quantize artifact directory, bundle directory or bundle zip
    name: str
    version: str  # the artifact hash: sha256 over its file hashes (Artifact.digest)
    gates: list = field(default_factory=list)
    root: Path | None = None  # where the service reads the files, when not `path`: an extracted bundle zip
    trusted_keys: list[str] | None = None  # public key PEMs: every worker verifies the bundle's signature
    # The verdict it is served under (lifecycle.verdict.Verdict.record(): passed, reasons, override): the
    # run's, as `lifecycle serve` judged it, or the one a bundle recorded, or else its own gates'.
    verdict: dict | None = None

    @property
    def tuned_path(self) -> Path:
        return self.path.with_name(self.path.name + TUNED_SUFFIX)

    def service_model(self) -> dict:
        return {"path": str(self.root or self.path), "name": self.name, "version": self.version,
                "gates": self.gates, "source": str(self.path), "trusted_keys": self.trusted_keys,
                "verdict": self.verdict or gates_verdict(self.gates), "endpoint": endpoint(self.root or self.path)}


# inputs kind -> the key of a request's list ({"texts": [...]}), for a schema.json that does not name it
REQUEST_KEYS = {"text": "texts", "rows": "rows", "images": "images", "prompts": "prompts"}


def endpoint(path: Path) -> dict:
    """The service's one inference endpoint for the model at `path` (a directory or a bundle zip, read in
    place): its route, task, inputs and answers kinds, request key and edge method, from schema.json as
    lifecycle.edge.Predictor reads it (its defaults; the kinds from lifecycle.edge.answers.KINDS for a model
    written before schema.json recorded them). The service builds its endpoint from this at import, before
    any worker opens the model; a worker refuses a model that does not match it (serving/service.py). An
    unreadable schema gives the defaults here: opening the model refuses it with the reason."""
    from lifecycle.edge import MAX_MANIFEST_BYTES, SCHEMA
    from lifecycle.edge.answers import KINDS

    try:
        if path.is_file():
            with zipfile.ZipFile(path) as zf:
                if zf.getinfo(SCHEMA).file_size > MAX_MANIFEST_BYTES:
                    raise ValueError("schema too large")
                schema = json.loads(zf.read(SCHEMA))
        else:
            schema = json.loads((path / SCHEMA).read_text())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        schema = {}
    schema = schema if isinstance(schema, dict) else {}
    task = schema.get("task", "classification")
    inputs, answers = (schema.get("inputs_kind"), schema.get("answers_kind"))
    if not (inputs and answers):
        inputs, answers = KINDS.get(task, (None, None))
    return {"route": schema.get("route", "/classify"), "task": task, "inputs_kind": inputs, "answers_kind": answers,
            "request_key": schema.get("request_key") or REQUEST_KEYS.get(inputs, inputs) or "texts",
            "method": schema.get("method", "predict")}


def last_onnx_artifact(run_dir: Path) -> Path:
    """The directory of a run's last finished stage (pipeline order, from pipeline.json) that wrote an
    onnx-model artifact. Only its manifest's kind is read here: the caller loads (and so verifies) the
    one artifact it uses, not every stage after it."""
    from lifecycle.edge import read_manifest

    try:
        stages = json.loads((run_dir / "pipeline.json").read_text())["pipeline"]["stages"]
        names = [stage.get("name") or stage["kind"] for stage in stages]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise LifecycleError(f"{run_dir / 'pipeline.json'}: not a run record (no pipeline stages); re-run the "
                             "pipeline") from None
    for name in reversed(names):
        art = run_dir / str(name)
        manifest = art / "manifest.json"
        if manifest.is_file() and read_manifest(manifest).get("kind") == "onnx-model":
            return art
    raise LifecycleError(f"{run_dir}: the run has no finished onnx-model stage (export or quantize); "
                         "run the pipeline first")


def resolve(source: str | Path) -> Served:
    """A run directory (its last ONNX artifact), an export/quantize artifact, or an edge bundle."""
    from lifecycle.edge import read_manifest, zip_manifest

    source = Path(source).resolve()
    if (source / "pipeline.json").is_file():
        return resolve(last_onnx_artifact(source))
    if source.is_file() and zipfile.is_zipfile(source):
        return _bundle(source, zip_manifest(source))
    manifest = read_manifest(source / "manifest.json") if (source / "manifest.json").is_file() else {}
    if "kind" in manifest:
        art = Artifact.load(source)
        if art.kind != "onnx-model":
            raise LifecycleError(f"{source}: a {art.kind} artifact; serve an export or quantize artifact "
                                 "(onnx-model), its run directory, or a bundle")
        return Served(source, f"{source.parent.name}-{art.manifest.get('stage')}", art.digest,
                      art.manifest.get("gates", []))
    if (source / "model.onnx").is_file():
        return _bundle(source, manifest)
    raise LifecycleError(f"{source}: nothing to serve; pass a run directory, an export/quantize artifact, "
                         "or a bundle made by `lifecycle bundle`")


def _bundle(path: Path, manifest: dict) -> Served:
    """A bundle written by `lifecycle bundle` names its artifact's hash and stage; it is served under
    the same name and version as that artifact. A directory without a manifest (made by hand) is
    versioned by its model file alone."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    files = manifest.get("files") or {"model.onnx": sha256_file(path if path.is_file() else path / "model.onnx")}
    version = source.get("digest") or stable_hash(files)
    if manifest.get("pipeline") and source.get("stage"):
        name = f"{manifest['pipeline']}-{source['stage']}"
    else:
        name = manifest.get("name") or path.stem
    gates = manifest.get("gates") if isinstance(manifest.get("gates"), list) else []
    verdict = manifest.get("verdict") if isinstance(manifest.get("verdict"), dict) else None
    return Served(path, str(name), version, gates, verdict=verdict)


@contextlib.contextmanager
def checked(served: Served):
    """Open the model once as the service will (lifecycle.edge.Predictor.open: every check a bundle gets),
    raising its BundleError with the bundle's own path in it. A zip is then extracted once, here, for
    every worker to read (`served.root`), and removed on exit: a worker killed at shutdown never
    removed its own extraction. The workers verify that directory against the manifest checked here."""
    from lifecycle.edge import EXTRACT_PREFIX, MANIFEST, BundleError, Predictor
    from lifecycle.edge.extraction import _extract

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
