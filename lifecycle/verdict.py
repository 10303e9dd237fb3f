"""The verdict on a finished run, judged again from disk (`lifecycle gate`, `lifecycle report`): every
artifact is checked against the config the run directory records (hashes, cache key, parent, a model
that loads) before its gates are checked, so a stale or tampered artifact is a failed stage, never a pass.

Every exit of a run reads the same verdict (`judge`): `bundle`, `promote`, `serve` and `build` refuse a run
that `gate` fails (`require`, exit 3), unless told `--override REASON`, which ships it with a warning and
records the override and the refused verdict in what is shipped."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle import ConfigError, GateFailed, LifecycleError
from lifecycle import gates as gatelib
from lifecycle.artifact import Artifact, ArtifactError
from lifecycle.config import Pipeline
from lifecycle.pipeline import RESOLVED, StageOutcome, cache_key, check_gates


def read_record(run_dir: str | Path) -> dict:
    """The run directory's record: resolved config, data fingerprints, and whether the last run finished."""
    resolved = Path(run_dir) / RESOLVED
    if not resolved.is_file():
        raise LifecycleError(f"{run_dir}: not a run directory (no {RESOLVED}); pass the directory `lifecycle run` wrote")
    try:
        record = json.loads(resolved.read_text())
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"{resolved}: unreadable ({exc}); re-run the pipeline") from None
    if not isinstance(record, dict) or not isinstance(record.get("pipeline"), dict) or "base_dir" not in record:
        raise LifecycleError(f"{resolved}: not a run record (no 'pipeline' config and 'base_dir'); re-run the pipeline")
    return record


@dataclass
class Verdict:
    """What `lifecycle gate` says of a run: its stages judged from disk, and whether its last run finished.
    Outcomes added later (gate --against, --trusted-key) count too."""

    pipeline: Pipeline
    outcomes: list[StageOutcome]
    state: str | None  # the last `lifecycle run`'s: "finished", "running" (killed), "crashed"...
    override: str | None = field(default=None)

    @property
    def reasons(self) -> list[str]:
        """One line per failed gate or stage, naming its stage; and one if the last run did not finish."""
        out = [f"{o.name}: {' '.join((g.message or g.bound).split())}"
               for o in self.outcomes for g in gatelib.blocking(o.gates)]
        out += [f"{o.name}: stage did not run" for o in self.outcomes if o.status == "skipped"]
        if self.state != "finished":  # a crashed or interrupted run is never a release, whatever its artifacts say
            out.append(f"run: the last `lifecycle run` did not finish (state: {self.state or 'not recorded'})")
        return out

    @property
    def passed(self) -> bool:
        return not self.reasons

    def record(self) -> dict:
        """What is shipped with the model (bundle manifest, registry entry, served metadata)."""
        return {"passed": self.passed, "reasons": self.reasons, "override": self.override}


def judge(run_dir: str | Path, registry=None) -> Verdict:
    """The verdict on the run directory as `lifecycle gate` gives it (see load_run)."""
    state = read_record(run_dir).get("state")
    pipeline, outcomes = load_run(run_dir, registry)
    return Verdict(pipeline, outcomes, state)


def run_of(source: str | Path) -> Path | None:
    """The run directory behind `source`: itself, or the run an artifact directory sits in; None for what
    is not part of a run (a bundle zip or directory, an artifact copied out), which keeps its own checks."""
    source = Path(source)
    if (source / RESOLVED).is_file():
        return source
    if (source / "manifest.json").is_file() and (source.parent / RESOLVED).is_file():
        return source.parent
    return None


def require(source: str | Path, action: str, override: str | None = None, registry=None) -> dict | None:
    """For `bundle`, `promote`, `serve` and `build`: the verdict record of the run behind `source` (None when
    it is not part of a run). A failing verdict raises GateFailed (exit 3) with one line naming the stages and
    reasons; with `override` (why) it is shipped anyway, with a warning on stderr, and the record says so."""
    run_dir = run_of(source)
    if run_dir is None:
        return None
    verdict = judge(run_dir, registry)
    if verdict.passed:
        return verdict.record()
    reasons = "; ".join(verdict.reasons)
    if override is None:
        raise GateFailed(f"{run_dir}: refusing to {action} a run that `lifecycle gate` fails: {reasons} "
                         "(re-run `lifecycle run`, or pass --override REASON to ship it anyway)")
    if not override.strip():
        raise ConfigError("--override: give the reason for shipping a run that failed its verdict")
    verdict.override = override
    print(f"warning: {action} of {run_dir} overrides a failed verdict ({override}): {reasons}", file=sys.stderr)
    return verdict.record()


def load_run(run_dir: str | Path, registry=None) -> tuple[Pipeline, list[StageOutcome]]:
    """Reload a run from disk (for `lifecycle gate` and `lifecycle report`) and judge it again.

    Each artifact is checked against the config the run directory records, not just against itself:
    its files must match their hashes, its cache key must be the one the recorded config implies
    (parent chain and data included), its parent must be the artifact it was built from, and its model
    must load (lifecycle.integrity). An
    artifact that fails any of these is a failed stage with a message saying why, never a pass.
    `registry`: where gates against a release look (default: lifecycle.tracking.store_uri()).
    """
    from lifecycle import integrity
    from lifecycle.config import build

    run_dir = Path(run_dir)
    raw = read_record(run_dir)
    pipeline = build(raw["pipeline"], base_dir=Path(raw["base_dir"]), source=str(run_dir / RESOLVED))
    fingerprints = _fingerprints_for_check(pipeline, raw.get("data", {}))
    outcomes, artifacts, keys = [], {}, {}
    for stage in pipeline.stages:
        parent_cfg = pipeline.parent_of(stage)
        parent_label = parent_cfg.label if parent_cfg is not None else None
        path = run_dir / stage.label
        keys[stage.label] = cache_key(pipeline, stage, keys.get(parent_label), fingerprints, _pins_for_check(stage, path))
        if not path.exists():
            outcomes.append(StageOutcome(stage.label, stage.kind, "skipped"))
            continue
        try:
            art = Artifact.load(path)
        except ArtifactError as exc:
            outcomes.append(StageOutcome(stage.label, stage.kind, "failed", None, [_integrity_failure(str(exc))]))
            continue
        problem = (_mismatch(stage.label, art, keys[stage.label], artifacts.get(parent_label), parent_label)
                   or integrity.load_problem(art))  # hashes prove the bytes, not that the model loads
        artifacts[stage.label] = art
        results = [_integrity_failure(problem)] if problem else []
        results += check_gates(pipeline, stage, art.metrics, artifacts, candidate=art, registry=registry)
        status = "failed" if gatelib.blocking(results) else "passed"
        seconds = art.manifest.get("timings", {}).get("seconds", 0.0)  # as the run recorded it
        outcomes.append(StageOutcome(stage.label, stage.kind, status, art, results, seconds))
    return pipeline, outcomes


def _fingerprints_for_check(pipeline: Pipeline, recorded: dict[str, str]) -> dict[str, str]:
    """Hash the data again where it is reachable (data changed since: the stages are stale); where a
    source is not on this machine (a CI job gating a run made elsewhere), use what the run recorded."""
    out = {}
    for name, src in pipeline.data.items():
        try:
            out[name] = src.fingerprint(pipeline)
        except LifecycleError:
            if name not in recorded:
                raise LifecycleError(f"data source '{name}' is not on this machine and the run recorded no "
                                     "fingerprint for it; gate the run where its data is") from None
            out[name] = recorded[name]
    return out


def _pins_for_check(stage, path: Path) -> dict[str, dict]:
    """The commits of the stage's Hub models as the cache resolves them now (a moved tag: the stage is stale);
    where the cache lacks them (a CI job gating a run made elsewhere), what the stage's manifest recorded."""
    from lifecycle import models

    try:
        return models.hub_pins(stage)
    except LifecycleError:
        manifest = path / "manifest.json"
        recorded = json.loads(manifest.read_text()).get("hub", {}) if manifest.is_file() else {}
        pins = {name: pin for name, pin in recorded.items() if not name.startswith("data.")}
        if not pins:
            raise
        return pins


def _mismatch(label: str, art: Artifact, key: str, parent: Artifact | None, parent_label: str | None) -> str | None:
    if art.cache_key != key:
        return (f"stage '{label}' is stale: its artifact was built from another config, parent or data than "
                f"{RESOLVED} records (cache key {art.cache_key[:12]}, expected {key[:12]}); re-run `lifecycle run`")
    recorded_parent = art.manifest.get("parent")
    if parent_label is None or recorded_parent is None:
        return None
    if parent is None:
        return f"stage '{label}': its parent artifact '{parent_label}' is missing or refused"
    if recorded_parent.get("digest") != parent.digest:
        return (f"stage '{label}' was built from other bytes than the '{parent_label}' artifact now in the run "
                "directory (parent digest differs): it belongs to another run; re-run `lifecycle run`")
    return None


def _integrity_failure(message: str) -> gatelib.GateResult:
    """An artifact that cannot be trusted, reported as a failed gate so report.json and junit show it."""
    return gatelib.GateResult("artifact", "artifact matches the recorded config and its hashes", None, None,
                              False, "stop", message=message)
