"""Promotion: a run's model registered as a new version of the MLflow Model Registry, and an alias moved
(`lifecycle promote`); and the migration of an older lifecycle's folder registry. Reading versions back,
verified, is lifecycle.release.

A version is one MLflow run's artifact folder `release/`, registered as the version's source:

    MLmodel, model.onnx, ...  the ONNX graph as an MLflow model (onnx flavour: mlflow.onnx.load_model
                              ("models:/NAME@production")), when the promoted artifact is an ONNX model
    model.zip                 its edge bundle (lifecycle.edge.Predictor opens it)
    predictions/test.jsonl    the per-example test predictions candidates are paired with
    gates.json, model_card.md its gate results and card
    entry.json                what was promoted (stage, digest, metrics, data fingerprints, the verdict it was
                              promoted under) and the sha256 of every file above
    entry.sig                 with `promote --sign KEY`: a signature over entry.json's exact bytes

and tagged `lifecycle.digest` (the artifact's content digest), `lifecycle.entry_sha256` (entry.json's),
`lifecycle.stage`, `lifecycle.bundle_sha256`. The guarantees of the folder registry this replaced hold:
- versions are immutable: a version's files are read back and checked against entry.json, and entry.json
  against the tag the registry database holds, so a file edited, added or removed in the artifact store
  is refused, naming it;
- promotion is atomic: every file is uploaded to the run before the version is created (with all its tags,
  in one call) and only then does the alias move; a failure leaves no version, and the run marked FAILED;
- the same artifact (by content digest) promoted again reuses its version and moves only the alias. (Two
  promotions of one artifact at the same instant may both register it: two complete versions, the alias on
  the later. The folder registry's file lock has no counterpart on a shared server.)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from lifecycle import ConfigError, LifecycleError
from lifecycle.evaluation import TEST_PREDICTIONS, Predictions
from lifecycle.release import (
    BUNDLE,
    CARD,
    ENTRY,
    EXPERIMENT,
    FOLDER,
    TAG,
    Entry,
    _download,
    _mlflow_errors,
    _read_json,
    _registered,
    candidate,
    check_alias,
    check_name,
    resolve,
)


def promote(source: str | Path, alias: str, registry: str | Path | None = None, stage: str | None = None,
            verdict: dict | None = None, sign: str | Path | None = None, model: str | None = None) -> Entry:
    """Register the artifact behind `source` (see `candidate`) as a new version of `model` (default: its
    pipeline's name) and point `alias` at it. The same artifact (by content digest) promoted again reuses
    its version. `verdict`: the run's verdict record (lifecycle.verdict.require, which `lifecycle promote`
    calls first), recorded in entry.json; without one, the artifact's own gates are its verdict. An
    overridden verdict also promotes an artifact whose own gates failed. `sign`: an Ed25519 private key
    PEM; entry.sig signs entry.json (lifecycle.signing.sign_release)."""
    from lifecycle import tracking
    from lifecycle.artifact import gates_verdict
    from lifecycle.signing import load_private_key, sign_release

    check_alias(alias)
    if sign is not None:
        load_private_key(sign)  # a bad key fails before any work
    art = candidate(source, stage)
    name = check_name(model or art.path.parent.name)
    verdict = verdict or gates_verdict(art.manifest.get("gates", []))
    if not verdict["passed"] and not verdict.get("override"):
        raise LifecycleError(f"{art.path}: refusing to promote a model that failed its gates: "
                             + "; ".join(verdict["reasons"]))
    uri = tracking.store_uri(registry)
    with _mlflow_errors(uri):
        client = tracking.client(uri)
        if _registered(client, name) is None:
            client.create_registered_model(name, description=f"releases of the lifecycle pipeline {name}")
        same = client.search_model_versions(f"name = '{name}' and tag.`{TAG}digest` = '{art.digest}'")
        for mv in sorted(same, key=lambda v: int(v.version)):
            entry = _download(client, mv, uri)
            if sign is not None:
                client.log_artifact(mv.run_id, str(sign_release(entry.path, sign)), FOLDER)
            client.set_registered_model_alias(name, alias, mv.version)
            return entry
        with tempfile.TemporaryDirectory(prefix="lifecycle-promote-") as tmp:
            folder = Path(tmp) / FOLDER
            meta = _write_release(art, folder, name, verdict)
            if sign is not None:
                sign_release(folder, sign)
            mv = _register(client, uri, name, folder, meta)
        client.set_registered_model_alias(name, alias, mv.version)
    return resolve(f"models:/{name}/{mv.version}", uri)  # read back and verified: what gates will see


def _write_release(art, folder: Path, name: str, verdict: dict) -> dict:
    """The version's files in `folder` (new) and its entry.json; returns the entry."""
    import shutil

    from lifecycle import model_card
    from lifecycle.artifact import hash_tree, sha256_file, write_json

    if art.kind == "onnx-model":
        import mlflow.onnx
        import onnx

        from lifecycle.bundle import write_bundle
        from lifecycle.edge import check_external_data
        from lifecycle.edge.bundle import MODEL

        # the graph as an MLflow model (onnx flavour), so MLflow's own tools load the release; the edge
        # bundle beside it carries what the graph needs to answer (tokenizer, labels, schema). A graph
        # stored whole stays whole (MLflow would split its weights out under a random file name).
        mlflow.onnx.save_model(onnx.load(art.path / MODEL), folder,
                               save_as_external_data=bool(check_external_data(art.path / MODEL)))
        write_bundle(art.path, folder / BUNDLE, verdict=verdict)
    else:
        folder.mkdir(parents=True)
    preds = Predictions.load(art.path / TEST_PREDICTIONS)
    (folder / TEST_PREDICTIONS).parent.mkdir(parents=True)
    shutil.copy2(art.path / TEST_PREDICTIONS, folder / TEST_PREDICTIONS)
    write_json(folder / "gates.json", art.manifest.get("gates", []))
    bundle = folder / BUNDLE
    meta = {
        "model": name,
        "source": str(art.path),
        "pipeline": art.path.parent.name,
        "stage": art.manifest.get("stage"),
        "stage_kind": art.manifest.get("stage_kind"),
        "kind": art.kind,
        "cache_key": art.cache_key,
        "digest": art.digest,
        "metrics": art.metrics,
        "data": art.manifest.get("data", {}),
        "test_fingerprint": preds.fingerprint,
        "test_examples": len(preds.ids),
        "bundle": BUNDLE if bundle.is_file() else None,
        "bundle_sha256": sha256_file(bundle) if bundle.is_file() else None,
        "verdict": verdict,
    }
    (folder / CARD).write_text(model_card.render(art, release=meta))
    meta["files"] = hash_tree(folder)
    write_json(folder / ENTRY, meta)
    return meta


def _register(client, uri: str, name: str, folder: Path, meta: dict):
    """Upload `folder` to a new run, then create the model version from it with all its tags at once: a
    version exists only once every file is stored. On a failure the run is marked FAILED."""
    from lifecycle import tracking
    from lifecycle.artifact import sha256_file

    run = client.create_run(tracking.experiment_id(client, EXPERIMENT, uri), run_name=f"promote {name}",
                            tags={TAG + "pipeline": meta["pipeline"], TAG + "stage": str(meta["stage"])})
    tags = {TAG + "digest": meta["digest"], TAG + "entry_sha256": sha256_file(folder / ENTRY),
            TAG + "stage": str(meta["stage"]), TAG + "kind": meta["kind"], TAG + "pipeline": meta["pipeline"],
            TAG + "test_fingerprint": meta["test_fingerprint"], TAG + "verdict":
            "passed" if meta["verdict"]["passed"] else f"override: {meta['verdict'].get('override')}"}
    if meta["bundle_sha256"]:
        tags[TAG + "bundle_sha256"] = meta["bundle_sha256"]
    try:
        for key, value in meta["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(run.info.run_id, key, float(value))
        client.log_artifacts(run.info.run_id, str(folder), FOLDER)
        mv = client.create_model_version(name, f"{run.info.artifact_uri}/{FOLDER}", run.info.run_id, tags=tags,
                                         await_creation_for=120)
        if mv.status != "READY":
            raise LifecycleError(f"models:/{name}/{mv.version} ({uri}): registration ended {mv.status} "
                                 f"({mv.status_message}); promote again")
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id)
    return mv


# ------------------------------------------------------------------- from the folder registry it replaced
def migrate(old: str | Path, registry: str | Path | None = None, model: str | None = None) -> list[str]:
    """Copy the releases of an older lifecycle's folder registry (versions/vN/entry.json, aliases.json) into
    the MLflow registry: each version checked against its entry.json, registered as a version of `model`
    (default: the pipeline it was promoted from) unless that artifact is there already, and its aliases
    set. The old folder is left as it was. An old entry.sig is not carried over (entry.json is rewritten):
    sign again with `lifecycle promote RUN --alias NAME --sign KEY`. Returns one line per version."""
    import shutil

    from lifecycle import tracking
    from lifecycle.artifact import hash_tree, write_json
    from lifecycle.signing import RELEASE_SIGNATURE

    old = Path(old).expanduser().resolve()
    if not (old / "versions").is_dir():
        raise LifecycleError(f"{old}: not a folder registry (no versions/); name the folder that holds "
                             "versions/ and aliases.json")
    aliases = _read_json(old / "aliases.json", dict, "alias table") if (old / "aliases.json").is_file() else {}
    uri = tracking.store_uri(registry)
    lines = []
    with _mlflow_errors(uri):
        client = tracking.client(uri)
        for path in sorted(old.glob("versions/v*/" + ENTRY), key=lambda p: (len(p.parent.name), p.parent.name)):  # v2 before v10
            meta = _read_json(path, dict, "release record")
            files = {k: v for k, v in hash_tree(path.parent).items() if k not in (ENTRY, RELEASE_SIGNATURE)}
            if files != meta.get("files"):
                raise LifecycleError(f"{path.parent}: its files differ from its {ENTRY}; nothing of it was copied")
            name = check_name(model or str(meta.get("pipeline")))
            if _registered(client, name) is None:
                client.create_registered_model(name, description=f"releases of the lifecycle pipeline {name}")
            same = client.search_model_versions(f"name = '{name}' and tag.`{TAG}digest` = '{meta.get('digest')}'")
            if same:
                mv = min(same, key=lambda v: int(v.version))
            else:
                with tempfile.TemporaryDirectory(prefix="lifecycle-migrate-") as tmp:
                    folder = Path(tmp) / FOLDER
                    shutil.copytree(path.parent, folder, ignore=shutil.ignore_patterns(ENTRY, RELEASE_SIGNATURE))
                    entry = {k: v for k, v in meta.items() if k not in ("version", "files")}
                    entry.update(model=name, migrated_from=str(path.parent))
                    entry["files"] = hash_tree(folder)
                    write_json(folder / ENTRY, entry)
                    mv = _register(client, uri, name, folder, entry)
            moved = sorted(a for a, v in aliases.items() if v == path.parent.name)
            for alias in moved:
                client.set_registered_model_alias(name, check_alias(alias), mv.version)
            lines.append(f"{path.parent.name} -> models:/{name}/{mv.version}" + "".join(f" @{a}" for a in moved))
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m lifecycle.promotion",
                                description="copy an older lifecycle's folder registry into the MLflow registry")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("migrate", help="copy every version and alias of OLD (e.g. ~/.lifecycle/registry)")
    sp.add_argument("old")
    sp.add_argument("--registry", metavar="DIR_OR_URI", help="the MLflow store (default: as `lifecycle promote`)")
    sp.add_argument("--model", help="registered model name (default: each version's pipeline)")
    args = p.parse_args(argv)
    try:
        lines = migrate(args.old, args.registry, args.model)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines) or f"{args.old}: no versions to copy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
