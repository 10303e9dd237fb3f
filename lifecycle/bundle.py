"""Edge bundle: one zip with everything `lifecycle.edge.Predictor` needs, and proof of where it came from.

    lifecycle bundle runs/my-pipeline -o model.zip      # the run's last onnx-model stage
    lifecycle bundle runs/my-pipeline/quantize -o model.zip

The zip holds model.onnx (plus any external-data files it names), tokenizer.json, labels.json,
schema.json (input names and dtypes, max length, task), model_card.md (lifecycle.model_card) and
manifest.json: the sha256 of every file, the stage's metrics and gate results, the source artifact's
cache key and digest, a few recorded predictions that `Predictor.check()` reproduces on the device, and
the verdict it was shipped under. A model whose gates failed is not bundled, nor (`lifecycle bundle`) a
run that `lifecycle gate` fails, unless `--override REASON` says why (lifecycle.verdict). The zip is
deterministic (fixed timestamps, sorted members): the same artifact always gives the same bytes, so its
sha256 identifies a release.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

from lifecycle import LifecycleError, __version__, model_card
from lifecycle.artifact import Artifact, gates_verdict, sha256_file
from lifecycle.edge import (
    LABELS,
    MANIFEST,
    MODEL,
    SCHEMA,
    SIGNATURE,
    Predictor,
    check_external_data,
    required_files,
)
from lifecycle.serving.source import last_onnx_artifact

FORMAT = "lifecycle-bundle/1"
CARD = "model_card.md"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: members carry no build time


def write_bundle(source: Path, output: Path, sign: Path | None = None, verdict: dict | None = None) -> Path:
    """Write the bundle for `source` (a run directory or an onnx-model artifact) to `output`; with
    `sign` (an Ed25519 private key PEM), add manifest.sig over manifest.json (lifecycle.signing).
    `verdict`: the run's verdict record (lifecycle.verdict.require, which `lifecycle bundle` calls first),
    recorded in the manifest; without one, the artifact's own gates are its verdict. An overridden verdict
    also ships an artifact whose own gates failed."""
    output = Path(output)
    if output.is_dir():
        raise LifecycleError(f"-o {output}: a directory; name the zip to write (e.g. {output / 'model.zip'})")
    art = onnx_artifact(Path(source))
    verdict = verdict or gates_verdict(art.manifest.get("gates", []))
    if not verdict["passed"] and not verdict.get("override"):
        raise LifecycleError(f"{art.path}: refusing to bundle a model that failed its gates: "
                             + "; ".join(verdict["reasons"]))
    if sign is not None:  # a bad key fails before any work
        from lifecycle import signing

        key = signing.load_private_key(sign)
    schema = json.loads((art.path / SCHEMA).read_text())
    names = [*required_files(schema), *check_external_data(art.path / MODEL)]
    files = {name: sha256_file(art.path / name) for name in sorted(set(names))}
    card = model_card.render(art).encode()  # from manifests only: the same artifact gives the same card
    files[CARD] = hashlib.sha256(card).hexdigest()
    details = art.manifest.get("details", {})
    manifest = {
        "format": FORMAT,
        "files": files,
        "schema": schema,
        "labels": json.loads((art.path / LABELS).read_text()),
        "metrics": art.metrics,
        "gates": art.manifest.get("gates", []),
        "sample_predictions": details.get("sample_predictions", []),
        "pipeline": art.path.parent.name,  # the run directory is named after the pipeline
        "source": {"stage": art.manifest.get("stage"), "stage_kind": art.manifest.get("stage_kind"),
                   "method": details.get("method"), "cache_key": art.cache_key, "digest": art.digest},
        "environment": art.manifest.get("environment"),
        # the CPU flags the gates were checked on: lifecycle.edge warns when an int8 graph runs on a CPU
        # that differs in one that changes int8 numerics (VNNI)
        "isa": (art.manifest.get("environment") or {}).get("isa", []),
        "lifecycle_version": __version__,
        # the verdict it was shipped under: passed, the reasons it failed, and the override that shipped it anyway
        "verdict": verdict,
    }
    part = output.with_name(output.name + ".part")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):
                _add(zf, name, card if name == CARD else (art.path / name).read_bytes())
            manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            _add(zf, MANIFEST, manifest_bytes)
            if sign is not None:
                record = signing.signature_record(manifest_bytes, key)
                _add(zf, SIGNATURE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        # prove the bundle opens (and its signature verifies) and reproduces the recorded predictions
        predictor = Predictor.open(part, trusted_keys=[signing.public_pem(key)] if sign is not None else None)
        if manifest["sample_predictions"]:
            predictor.check()
        os.replace(part, output)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # its folder may be a file: nothing was written then
            part.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a parent that is a file, no permission, no space: one line
            raise LifecycleError(f"-o {output}: cannot write the bundle ({exc.strerror or exc})") from None
        raise
    return output


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data)


def onnx_artifact(source: Path) -> Artifact:
    """The verified onnx-model artifact behind `source`: the artifact itself, or a run directory's
    last stage that produced one (in pipeline order, read from pipeline.json)."""
    if (source / MANIFEST).is_file():
        art = Artifact.load(source)
        if art.kind != "onnx-model":
            raise LifecycleError(f"{source}: a {art.kind} artifact; bundle an export or quantize artifact")
        return art
    if not (source / "pipeline.json").is_file():
        raise LifecycleError(f"{source}: neither an artifact (no {MANIFEST}) nor a run directory (no pipeline.json)")
    return Artifact.load(last_onnx_artifact(source))
