"""The verdict on a finished run, judged again from disk (`lifecycle gate`, `lifecycle report`): every
artifact is checked against the config the run directory records (hashes, cache key, parent, a model
that loads) before its gates are checked, so a stale or tampered artifact is a failed stage, never a pass."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle import LifecycleError
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
        return json.loads(resolved.read_text())
    except json.JSONDecodeError as exc:
        raise LifecycleError(f"{resolved}: unreadable ({exc}); re-run the pipeline") from None


def load_run(run_dir: str | Path, registry=None) -> tuple[Pipeline, list[StageOutcome]]:
    """Reload a run from disk (for `lifecycle gate` and `lifecycle report`) and judge it again.

    Each artifact is checked against the config the run directory records, not just against itself:
    its files must match their hashes, its cache key must be the one the recorded config implies
    (parent chain and data included), its parent must be the artifact it was built from, and its model
    must load (lifecycle.integrity). An
    artifact that fails any of these is a failed stage with a message saying why, never a pass.
    `registry`: where gates against a release look (default: lifecycle.release.registry_root()).
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
        keys[stage.label] = cache_key(pipeline, stage, keys.get(parent_label), fingerprints)
        path = run_dir / stage.label
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
