"""The release registry is the MLflow Model Registry: the releases a candidate is gated against.

    lifecycle promote runs/my-pipeline --alias production      # a new version of model "my-pipeline", @production
    lifecycle gate runs/other-run --against production         # paired comparison on the same test examples
    lifecycle gate runs/other-run --against models:/my-pipeline@production      # or /3, a version

The store is tracking's (lifecycle.tracking.store_uri): SQLite under ~/.lifecycle/mlflow by default, no
server; `--registry DIR_OR_URI` or $LIFECYCLE_REGISTRY another one; $MLFLOW_TRACKING_URI a team's server.
The registered model is named after the pipeline (`--model` names another); a bare alias or version
(`production`, `v3`) is one of the candidate's pipeline's model.

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
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle import ConfigError, LifecycleError
from lifecycle.evaluation import TEST_PREDICTIONS, Predictions

PAIRED = ("accuracy", "f1_macro", "f1_micro")  # metrics recomputable from per-example test predictions
ENTRY = "entry.json"  # = lifecycle.signing.RELEASE_RECORD
CARD = "model_card.md"
BUNDLE = "model.zip"
FOLDER = "release"  # the version's artifact folder in its run
EXPERIMENT = "lifecycle-releases"  # the runs that carry the versions' files
TAG = "lifecycle."
MLFLOW_READ_NOTE = "registered_model_meta"  # mlflow.store.artifact.models_artifact_repo.REGISTERED_MODEL_META_FILE_NAME
OLD_DEFAULT = "~/.lifecycle/registry"  # the folder registry this replaced (see `migrate`)


class ReleaseNotFound(LifecycleError):
    """No registry entry under that alias or version (exit 1)."""


class DataMismatch(ConfigError):
    """Candidate and release were scored on different test examples: no paired comparison (exit 2)."""


@dataclass
class Comparison:
    metric: str
    baseline: float
    candidate: float
    delta: float  # candidate - baseline
    low: float  # 95% interval of the delta (paired bootstrap)
    high: float
    p_value: float  # McNemar's exact test for accuracy, the bootstrap's otherwise
    test: str
    n: int
    worse: int  # examples the baseline got right and the candidate wrong
    better: int

    def describe(self) -> str:
        return (f"{self.metric} {self.candidate:.4f} vs {self.baseline:.4f}: delta {self.delta:+.4f}, "
                f"95% CI [{self.low:+.4f}, {self.high:+.4f}], {self.test} p={self.p_value:.3g} "
                f"({self.worse} worse, {self.better} better of {self.n})")


def compare(metric: str, baseline: Predictions, candidate: Predictions, seed: int = 0, what: str = "the release",
            resamples: int | None = None) -> Comparison:
    """Paired comparison of two models' predictions on the same test examples."""
    import numpy as np

    from lifecycle.evaluation import stats

    if metric not in stats.METRICS:
        raise ConfigError(f"'{metric}' has no per-example comparison (one of {', '.join(stats.METRICS)})")
    if baseline.fingerprint != candidate.fingerprint:
        raise DataMismatch(
            f"the candidate was scored on other test examples than {what} ({len(candidate.ids)} vs "
            f"{len(baseline.ids)} examples, test fingerprints {candidate.fingerprint[:12]} vs "
            f"{baseline.fingerprint[:12]}): a paired comparison needs the same test split; run the candidate "
            "on the release's data and split")
    refs, base, cand = np.asarray(baseline.labels), np.asarray(baseline.preds), np.asarray(candidate.preds)
    fn = stats.METRICS[metric]
    boot = stats.paired_bootstrap(fn, refs, base, cand, resamples or stats.RESAMPLES, seed)
    correct = (lambda p: (p == refs).all(-1) if refs.ndim > 1 else p == refs)  # noqa: E731
    mc = stats.mcnemar(correct(base), correct(cand))
    p, test = (mc.p_value, "McNemar") if metric == "accuracy" else (boot.p_value, "bootstrap")
    return Comparison(metric, fn(refs, base), fn(refs, cand), boot.delta, boot.low, boot.high, p, test, len(refs),
                      mc.worse, mc.better)


# ------------------------------------------------------------------------------------------ registry
def check_name(name: str, what: str = "model name") -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or ""):
        raise ConfigError(f"{what} '{name}': use letters, digits, '_', '.' and '-' (e.g. my-pipeline)")
    return name


def check_alias(alias: str) -> str:
    """MLflow's rule for aliases: letters, digits, '_' and '-'; 'latest' and v<number> are reserved."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", alias or "") or re.fullmatch(r"(?i)latest|v\d+", alias):
        raise ConfigError(f"alias '{alias}': use letters, digits, '_' and '-', not 'latest' or v<number> "
                          "(e.g. production)")
    return alias


def parse(ref: str, model: str | None) -> tuple[str, str | None, str | None]:
    """(model, alias, version) of a release reference: models:/NAME@ALIAS, models:/NAME/VERSION, or an
    alias or version (v3, 3) of `model`."""
    if ref.startswith("models:/"):
        m = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/v?(\d+))", ref)
        if not m:
            raise ConfigError(f"release '{ref}': use models:/NAME@ALIAS or models:/NAME/VERSION")
        return check_name(m[1]), m[2] and check_alias(m[2]), m[3]
    if model is None:
        raise ConfigError(f"release '{ref}': name the model too (models:/NAME@{ref})")
    version = re.fullmatch(r"v?(\d+)", ref or "")
    return check_name(model), None if version else check_alias(ref), version[1] if version else None


@dataclass
class Entry:
    """A release read back from the registry: its files verified in a local folder (`path`)."""

    path: Path
    meta: dict  # entry.json
    model: str = ""
    number: str = ""  # MLflow's version number
    store: str = ""  # the tracking/registry URI
    tags: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"v{self.number}"

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.number}"

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    def predictions(self) -> Predictions:
        return Predictions.load(self.path / TEST_PREDICTIONS)

    def verify(self) -> None:
        """Refuse, naming the file, a version whose files differ from what entry.json lists (and entry.json
        from the digest the version's tag holds)."""
        from lifecycle.artifact import hash_tree, sha256_file
        from lifecycle.signing import RELEASE_SIGNATURE

        where = f"{self.uri} ({self.store})"
        entry = self.path / ENTRY
        if not entry.is_file():
            raise LifecycleError(f"{where}: {ENTRY} is missing from the artifact store; promote the run again")
        if sha256_file(entry) != self.tags.get(TAG + "entry_sha256"):
            raise LifecycleError(f"{where}: {ENTRY} changed in the artifact store since it was promoted (its sha256 "
                                 f"differs from the version's {TAG}entry_sha256 tag); promote the run again")
        self.meta = _read_json(entry, dict, "release record")
        listed = self.meta.get("files") if isinstance(self.meta.get("files"), dict) else {}
        # MLflow itself writes `registered_model_meta` (the model's name and version) beside an MLmodel it loads
        # by models:/ from a local store, so a read would look like tampering: it is not content, never listed
        got = {k: v for k, v in hash_tree(self.path).items()
               if k not in (ENTRY, RELEASE_SIGNATURE) and Path(k).name != MLFLOW_READ_NOTE}
        for name in sorted(listed.keys() | got.keys()):
            if name not in got:
                raise LifecycleError(f"{where}: {name} is missing from the artifact store; promote the run again")
            if name not in listed:
                raise LifecycleError(f"{where}: {name} was added to the artifact store after promotion; remove it "
                                     "or promote the run again")
            if got[name] != listed[name]:
                raise LifecycleError(f"{where}: {name} changed in the artifact store since it was promoted (sha256 "
                                     f"{got[name][:12]}, {ENTRY} lists {listed[name][:12]}); promote the run again")


def resolve(ref: str, registry: str | Path | None = None, model: str | None = None) -> Entry:
    """A release by reference (see `parse`; `model`: the registered model a bare alias or version is of),
    downloaded into a temporary folder and verified."""
    from lifecycle import tracking

    name, alias, number = parse(ref, model)
    uri = tracking.store_uri(registry)
    root = tracking.local_root(uri)
    if root is not None and not (root / tracking.DATABASE).is_file():
        raise ReleaseNotFound(f"no release '{ref}': the registry {root} is empty; promote one: lifecycle promote "
                              f"RUN_DIR --alias {alias or 'production'}{_old_folder(root)}")
    with _mlflow_errors(uri):
        client = tracking.client(uri)
        found = _registered(client, name)
        aliases = dict(sorted(found.aliases.items())) if found is not None else {}
        if found is not None and (number or aliases.get(alias)):
            number = number or aliases[alias]
            mv = _version(client, name, number)
            if mv is not None:
                return _download(client, mv, uri)
    have = ", ".join(f"{a} -> v{v}" for a, v in aliases.items()) or "none"
    what = f"version {number}" if number else f"alias '{alias}'"
    raise ReleaseNotFound(f"no release '{ref}': model '{name}' has no {what} in the registry {uri} (aliases: "
                          f"{have}); promote one: lifecycle promote RUN_DIR --alias {alias or 'production'}"
                          f"{_old_folder(root)}")


def _old_folder(root: Path | None) -> str:
    """Where the default store is read and the folder registry of an older lifecycle sits beside it: say so."""
    from lifecycle import tracking

    old = Path(OLD_DEFAULT).expanduser()
    if root != Path(tracking.DEFAULT_STORE).expanduser().resolve() or not (old / "versions").is_dir():
        return ""
    return f"; {old} (the folder registry of an older lifecycle) is no longer read: python -m lifecycle.release migrate {old}"


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _version(client, name: str, number: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, number)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _download(client, mv, uri: str) -> Entry:
    """The version's files in a fresh temporary folder (removed when the process exits), verified."""
    import atexit
    import shutil

    if mv.status != "READY" or not mv.tags.get(TAG + "entry_sha256"):
        raise LifecycleError(f"models:/{mv.name}/{mv.version} ({uri}): not a lifecycle release (status {mv.status}, "
                             f"no {TAG}entry_sha256 tag); promote a run to make one")
    local = Path(tempfile.mkdtemp(prefix="lifecycle-release-"))
    atexit.register(shutil.rmtree, local, True)
    try:
        client.download_artifacts(mv.run_id, FOLDER, str(local))
    except Exception as exc:  # a run or folder deleted from the store: MLflow raises several kinds
        raise LifecycleError(f"models:/{mv.name}/{mv.version} ({uri}): its files cannot be read from the artifact "
                             f"store ({' '.join(str(exc).split())[:200]}); promote the run again") from None
    entry = Entry(local / FOLDER, {}, mv.name, str(mv.version), uri, dict(mv.tags))
    entry.verify()
    return entry


@contextlib.contextmanager
def _mlflow_errors(uri: str):
    """An MLflow failure (a server down, a database locked, a folder unwritable) as one line naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        message = " ".join(str(exc.message).split())[:300]
        raise LifecycleError(f"the MLflow registry at {uri}: {message}") from None
    except OSError as exc:  # a local store's folder unwritable, a file where a folder should be, a full disk
        raise LifecycleError(f"the MLflow registry at {uri}: {exc}; fix its folder or point --registry "
                             "elsewhere") from None


def candidate(source: str | Path, stage: str | None = None):
    """The classification artifact behind `source`: an artifact directory, or a run directory's named
    stage, or its last stage (pipeline order) that wrote per-example test predictions."""
    from lifecycle.artifact import MANIFEST, Artifact

    source = Path(source)
    if (source / MANIFEST).is_file() and stage is None:
        return Artifact.load(source)
    resolved = source / "pipeline.json"
    if not resolved.is_file():
        raise LifecycleError(f"{source}: neither an artifact (no {MANIFEST}) nor a run directory (no pipeline.json)")
    names = [s.get("name") or s["kind"] for s in json.loads(resolved.read_text())["pipeline"]["stages"]]
    if stage is not None:
        if stage not in names:
            raise ConfigError(f"--stage: no stage '{stage}' in {source} (have {names})")
        return Artifact.load(source / stage)
    for name in reversed(names):
        if (source / name / TEST_PREDICTIONS).is_file() and (source / name / MANIFEST).is_file():
            return Artifact.load(source / name)
    raise LifecycleError(f"{source}: no finished stage with per-example test predictions ({TEST_PREDICTIONS}); "
                         "a classification stage (finetune, distill, export, quantize) writes them")


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


def _read_json(path: Path, kind: type, what: str):
    """A registry file (entry.json): a JSON `kind`, or one line naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"{path.name}: unreadable {what} ({exc}); promote the run again") from None
    if not isinstance(value, kind):
        raise LifecycleError(f"{path.name}: a JSON {type(value).__name__}, not the {what} (a JSON "
                             f"{kind.__name__}); promote the run again")
    return value


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

    p = argparse.ArgumentParser(prog="python -m lifecycle.release",
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
