"""The release registry is the MLflow Model Registry: the releases a candidate is gated against.

    lifecycle promote runs/my-pipeline --alias production      # a new version of model "my-pipeline", @production
    lifecycle gate runs/other-run --against production         # paired comparison on the same test examples
    lifecycle gate runs/other-run --against models:/my-pipeline@production      # or /3, a version

The store is tracking's (lifecycle.tracking.store_uri): SQLite under ~/.lifecycle/mlflow by default, no
server; `--registry DIR_OR_URI` or $LIFECYCLE_REGISTRY another one; $MLFLOW_TRACKING_URI a team's server.
The registered model is named after the pipeline (`--model` names another); a bare alias or version
(`production`, `v3`) is one of the candidate's pipeline's model.

Promoting (writing a version) is lifecycle.promotion.
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
    return f"; {old} (the folder registry of an older lifecycle) is no longer read: python -m lifecycle.promotion migrate {old}"


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
