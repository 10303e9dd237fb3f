"""A local model registry: the releases a candidate is gated against.

    lifecycle promote runs/my-pipeline --alias production     # store the run's last classifier as a version
    lifecycle gate runs/other-run --against production        # paired comparison on the same test examples

Layout (default ~/.lifecycle/registry; env LIFECYCLE_REGISTRY or --registry override it):

    versions/v1/entry.json              what was promoted: stage, digests, metrics, data fingerprints, files,
                                        the verdict it was promoted under (and an override, if one shipped it)
    versions/v1/entry.sig               with `promote --sign KEY`: a signature over entry.json's exact bytes
                                        (lifecycle.signing; `gate --against ALIAS --trusted-key PUB` checks it)
    versions/v1/predictions/test.jsonl  its per-example test predictions (what candidates are paired with)
    versions/v1/gates.json              its gate results
    versions/v1/model_card.md
    versions/v1/model.zip               the edge bundle, when the promoted artifact is an ONNX model
    aliases.json                        {"production": "v1", ...}

A version is built in a temporary directory and renamed into place (never half-written), under a lock
that also guards aliases.json. Versions are immutable; promoting moves an alias.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lifecycle import ConfigError, LifecycleError
from lifecycle.evaluation import TEST_PREDICTIONS, Predictions

PAIRED = ("accuracy", "f1_macro", "f1_micro")  # metrics recomputable from per-example test predictions
DEFAULT_REGISTRY = "~/.lifecycle/registry"
ENTRY = "entry.json"  # = lifecycle.signing.RELEASE_RECORD
ALIASES = "aliases.json"
CARD = "model_card.md"
BUNDLE = "model.zip"


class ReleaseNotFound(LifecycleError):
    """No registry entry under that alias or version (exit 1)."""


class DataMismatch(ConfigError):
    """Candidate and release were scored on different test examples: no paired comparison (exit 2)."""


def check_name(name: str, what: str = "alias") -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or ""):
        raise ConfigError(f"{what} '{name}': use letters, digits, '_', '.' and '-' (e.g. production)")
    return name


def registry_root(explicit: str | Path | None = None) -> Path:
    root = Path(explicit or os.environ.get("LIFECYCLE_REGISTRY") or DEFAULT_REGISTRY).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LifecycleError(f"{root}: a file, not a registry directory; point --registry (or $LIFECYCLE_REGISTRY) "
                             "at a directory")
    return root


def _read_json(path: Path, kind: type, what: str):
    """A registry file (aliases.json, entry.json): a JSON `kind`, or one line naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"{path}: unreadable {what} ({exc}); restore it or remove it and promote again") from None
    if not isinstance(value, kind):
        raise LifecycleError(f"{path}: a JSON {type(value).__name__}, not the {what} (a JSON {kind.__name__}); "
                             "restore it or remove it and promote again")
    return value


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
@dataclass
class Entry:
    path: Path
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    def predictions(self) -> Predictions:
        return Predictions.load(self.path / TEST_PREDICTIONS)

    def verify(self) -> None:
        from lifecycle.artifact import hash_tree
        from lifecycle.signing import RELEASE_SIGNATURE

        # entry.sig is not listed in entry.json's files: it signs that file
        got = {k: v for k, v in hash_tree(self.path).items() if k not in (ENTRY, RELEASE_SIGNATURE)}
        if got != self.meta.get("files"):
            changed = sorted(set(got.items()) ^ set(self.meta.get("files", {}).items()))
            raise LifecycleError(f"{self.path}: registry entry changed since it was promoted ({changed[:3]})")


def resolve(name: str, registry: str | Path | None = None) -> Entry:
    """A registry entry by alias ("production") or version ("v3" or "3"), verified."""
    root = registry_root(registry)
    check_name(name, "release")
    aliases = _aliases(root)
    version = aliases.get(name) or (f"v{name}" if name.isdigit() else name)
    path = root / "versions" / version
    if not (path / ENTRY).is_file():
        have = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        raise ReleaseNotFound(f"no release '{name}' in the registry {root} (aliases: {have}); "
                              f"promote one: lifecycle promote RUN_DIR --alias {name}")
    entry = Entry(path, _read_json(path / ENTRY, dict, "registry entry"))
    entry.verify()
    return entry


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
            verdict: dict | None = None, sign: str | Path | None = None) -> Entry:
    """Store the artifact behind `source` (see `candidate`) as a new version and point `alias` at it.
    The same artifact (by content digest) promoted again reuses its version.
    `verdict`: the run's verdict record (lifecycle.verdict.require, which `lifecycle promote` calls first),
    recorded in entry.json; without one, the artifact's own gates are its verdict. An overridden verdict
    also promotes an artifact whose own gates failed. `sign`: an Ed25519 private key PEM; entry.sig signs
    entry.json (lifecycle.signing.sign_release)."""
    from lifecycle import model_card
    from lifecycle.artifact import gates_verdict, hash_tree, sha256_file, write_json
    from lifecycle.signing import load_private_key, sign_release

    check_name(alias)
    if sign is not None:
        load_private_key(sign)  # a bad key fails before any work
    art = candidate(source, stage)
    verdict = verdict or gates_verdict(art.manifest.get("gates", []))
    if not verdict["passed"] and not verdict.get("override"):
        raise LifecycleError(f"{art.path}: refusing to promote a model that failed its gates: "
                             + "; ".join(verdict["reasons"]))
    preds = Predictions.load(art.path / TEST_PREDICTIONS)
    root = registry_root(registry)
    versions = root / "versions"
    try:
        versions.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LifecycleError(f"{versions}: cannot create the registry ({exc.strerror}); point --registry at a "
                             "writable directory") from None
    with _locked(root):
        for existing in sorted(versions.glob("v*/" + ENTRY)):
            meta = _read_json(existing, dict, "registry entry")
            if meta.get("digest") == art.digest:
                if sign is not None:
                    sign_release(existing.parent, sign)
                _set_alias(root, alias, meta["version"])
                return Entry(existing.parent, meta)
        tmp = versions / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            (tmp / TEST_PREDICTIONS).parent.mkdir(parents=True)
            shutil.copy2(art.path / TEST_PREDICTIONS, tmp / TEST_PREDICTIONS)
            write_json(tmp / "gates.json", art.manifest.get("gates", []))
            if art.kind == "onnx-model":
                from lifecycle.bundle import write_bundle

                write_bundle(art.path, tmp / BUNDLE, verdict=verdict)
            version = f"v{1 + max((int(p.name[1:]) for p in versions.glob('v*') if p.name[1:].isdigit()), default=0)}"
            meta = {
                "version": version,
                "promoted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
                "bundle": BUNDLE if (tmp / BUNDLE).is_file() else None,
                "bundle_sha256": sha256_file(tmp / BUNDLE) if (tmp / BUNDLE).is_file() else None,
                "verdict": verdict,
            }
            (tmp / CARD).write_text(model_card.render(art, release=meta))
            meta["files"] = hash_tree(tmp)
            write_json(tmp / ENTRY, meta)
            if sign is not None:
                sign_release(tmp, sign)
            os.rename(tmp, versions / version)  # the lock makes the name free; rename refuses an existing one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _set_alias(root, alias, version)
    return Entry(versions / version, meta)


def _aliases(root: Path) -> dict[str, str]:
    path = root / ALIASES
    aliases = _read_json(path, dict, "alias table") if path.exists() else {}
    if not all(isinstance(v, str) for v in aliases.values()):
        raise LifecycleError(f"{path}: aliases must name versions (\"production\": \"v1\"); restore it or remove it "
                             "and promote again")
    return aliases


def _set_alias(root: Path, alias: str, version: str) -> None:
    from lifecycle.artifact import write_json

    write_json(root / ALIASES, {**_aliases(root), alias: version})


@contextlib.contextmanager
def _locked(root: Path):
    import fcntl

    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
