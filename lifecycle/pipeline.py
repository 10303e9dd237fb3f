"""Orchestration: plan, skip cached stages, run, gate, report. Nothing here is stage-specific.

Each stage is `module.run(cfg, parent, ctx) -> (metrics, details)`: its metrics and the rest of what
its manifest records (curves, attempts, choices made). It writes files into `ctx.out_dir`, which is
sealed into an artifact only when `run` returns. Gates are checked after sealing and recorded in
the manifest; they are not part of the cache key, so tightening a gate re-checks without retraining.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import GateFailed, LifecycleError, __version__, models, quiet, tracking
from lifecycle import distributed as dist
from lifecycle import gates as gatelib
from lifecycle import stages as registry
from lifecycle.artifact import (
    Artifact,
    ArtifactError,
    commit,
    inside,
    replaceable,
    stable_hash,
    update_manifest,
    write_json,
)
from lifecycle.config import Pipeline, check_files
from lifecycle.environment import environment
from lifecycle.evaluation import seeds as seeds_mod
from lifecycle.rundir import RESOLVED, disk_fault, disk_faults, writer
from lifecycle.schema import artifact_kind


@dataclass
class StageContext:
    """What a stage may use besides its config and parent: data, earlier artifacts, scratch space."""

    pipeline: Pipeline
    stage: Any
    out_dir: Path  # build the artifact here (a .tmp directory)
    scratch_dir: Path  # survives a crash for the same cache key (Trainer checkpoints); removed on success
    run_dir: Path
    artifacts: dict[str, Artifact]  # earlier stages of this run, by name
    seed: int = 0  # the seed of this run of the stage (the pipeline's, or one of the stage's `seeds`)
    mlflow_run: Any = None  # the pipeline's MLflow run (tracking.pipeline_run): training logs a nested run in it
    echo: Callable[[str], None] = print  # the run's output: stages say what they do through it
    # data sources loaded so far, shared by the stages of one run: a corpus is read, cleaned and
    # deduplicated once, not once per stage. Safe to share: a load depends only on the pipeline's data
    # config and seed, and stages derive new datasets (map, select) from it without changing it.
    _loaded: dict[Any, Any] = field(default_factory=dict, repr=False)

    def data(self, name: str):
        """A data source of the pipeline by name, loaded once per run (see lifecycle.data)."""
        from lifecycle import data

        if name not in self._loaded:
            self._loaded[name] = data.load(self.pipeline.data[name], self.pipeline)
        return self._loaded[name]

    @property
    def task(self):
        """The declaration of the pipeline's task (lifecycle.workloads), or None without a `task:`."""
        from lifecycle import workloads

        return workloads.task(self.pipeline.task.type) if self.pipeline.task is not None else None

    def task_data(self):
        if self.pipeline.task is None:
            raise LifecycleError(f"stage '{self.stage.label}' needs a `task:` section in the pipeline")
        return self.task.data(self)

    def recipe(self, cfg, parent) -> tuple[dict, dict]:
        """Runs the recipe the table gives the stage `cfg` (lifecycle.workloads). What it reports must be what
        it declares: `lifecycle validate` refuses gates by the declaration, so a metric reported but not
        declared is a recipe's bug, stopped here rather than left for a gate to miss."""
        recipe = self.pipeline.recipe(cfg, parent.holds if parent is not None else None)
        metrics, details = recipe(cfg, parent, self)
        if undeclared := sorted(set(metrics) - recipe.metrics):
            raise LifecycleError(f"stage '{cfg.label}': {recipe.run} reported {undeclared}, which its row of the "
                                 "recipe table (lifecycle.workloads) does not declare")
        return metrics, details

    def check_gates(self, metrics: dict, split: str = "test") -> list[gatelib.GateResult]:
        """This stage's gates on candidate metrics, for stages that choose among variants: with
        split="validation" the candidate's scores are validation scores and so are the references'."""
        return check_gates(self.pipeline, self.stage, metrics, self.artifacts, split)


def check_gates(pipeline: Pipeline, stage, metrics: dict, artifacts: dict[str, Artifact],
                split: str = "test", candidate: Artifact | None = None, registry=None) -> list[gatelib.GateResult]:
    """The stage's gates on `metrics`. Given the sealed `candidate` artifact, relative latency gates re-time
    it beside the reference artifact in this process (interleaved) instead of dividing numbers recorded
    apart, and gates against a release (vs: "release:NAME") read its test predictions; without one (a
    ladder's candidates) those gates are left for the artifact."""
    results = []
    for gate in stage.gates:
        if gate.release is not None:
            if candidate is not None:
                results.append(gatelib.release_gate(gate, candidate, registry))
            continue
        ref = pipeline.reference_name(stage, gate) if gate.relative else None
        if gate.interleaved and candidate is not None and ref in artifacts:
            max_length = pipeline.task.max_length if pipeline.task else 128
            results.append(gatelib.check_interleaved(gate, candidate, artifacts[ref], ref, max_length))
            continue
        ref_metrics = artifacts[ref].metrics if ref in artifacts else None
        if ref_metrics is not None and split == "validation":
            ref_metrics = gatelib.on_validation(ref_metrics)
        results.append(gatelib.check(gate, metrics, ref_metrics, ref))
    return results


@dataclass
class StageOutcome:
    name: str
    kind: str
    status: str  # passed | failed | cached | skipped
    artifact: Artifact | None = None
    gates: list[gatelib.GateResult] = field(default_factory=list)
    seconds: float = 0.0


def data_fingerprints(pipeline: Pipeline) -> dict[str, str]:
    """Content hash of every data source; raises (naming the file) when one is missing."""
    return {name: src.fingerprint(pipeline) for name, src in pipeline.data.items()}


def cache_key(pipeline: Pipeline, stage, parent_key: str | None, fingerprints: dict[str, str] | None = None,
              pins: dict[str, dict] | None = None) -> str:
    """What an artifact is a function of: its config, its parent's key (so the whole chain), the data,
    and the commit each Hub model it names resolves to (`pins`, default: now, from the cache; a Hub data
    set's commit is in its fingerprint)."""
    key = {
        "stage": stage.model_dump(mode="json", exclude={"gates"}),
        "parent": parent_key,
        "data": fingerprints if fingerprints is not None else data_fingerprints(pipeline),
        "task": pipeline.task.model_dump(mode="json") if pipeline.task else None,
        "seed": pipeline.seed,
        "deterministic": pipeline.deterministic,
        "lifecycle": __version__,
    }
    if pins := models.hub_pins(stage) if pins is None else pins:  # only then: keys of stages without a Hub model stay as they were
        key["hub"] = {name: pin["commit"] for name, pin in pins.items()}
    return stable_hash(key)


def hub_pins(pipeline: Pipeline, stage) -> dict[str, dict]:
    """What the stage's manifest records of the Hub repos behind it: its models by field, and the pipeline's
    Hub data sets as `data.NAME`, each as {"id", "revision", "commit"}."""
    data = {f"data.{name}": src.hub_snapshot(fetch=False).record() for name, src in pipeline.data.items() if src.hub}
    return {**models.hub_pins(stage), **data}


def run_directory(pipeline: Pipeline, workdir: str | Path | None = None) -> Path:
    """Where `run` writes: <workdir or the pipeline's workdir>/<name>."""
    return Path(workdir or pipeline.workdir).resolve() / pipeline.name


def run(pipeline: Pipeline, workdir: str | Path | None = None, from_stage: str | None = None, echo=print) -> list[StageOutcome]:
    """Run the pipeline; returns one outcome per stage. Raises GateFailed after writing the report."""
    run_dir = run_directory(pipeline, workdir)
    if from_stage is not None:
        pipeline.stage(from_stage)  # raises ConfigError on an unknown name
    # Every data file is read (hashed) before the run directory is touched: a missing file fails here
    # and leaves the previous run's record as it was.
    check_files(pipeline)
    fingerprints = data_fingerprints(pipeline)
    with disk_faults(run_dir), writer(run_dir):
        record = {"base_dir": str(pipeline.base_dir), "pipeline": pipeline.model_dump(mode="json"),
                  "data": fingerprints, "state": "running", "started": time.time()}
        # Written before the stages run, so `lifecycle gate` judges the artifacts against the config last
        # asked for: a re-run that crashes leaves older artifacts that no longer match it, and they fail as stale.
        _record(run_dir, record)
        try:
            outcomes = _run_stages(pipeline, run_dir, from_stage, fingerprints, echo)
        except GateFailed:
            _record(run_dir, {**record, "state": "finished", "passed": False, "ended": time.time()})
            raise
        except BaseException as exc:
            with contextlib.suppress(OSError):  # a full disk may refuse this record too: the error says why
                _record(run_dir, {**record, "state": "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed",
                                  "error": f"{type(exc).__name__}: {exc}", "ended": time.time()})
            raise
        _record(run_dir, {**record, "state": "finished", "passed": True, "ended": time.time()})
    return outcomes


def _record(run_dir: Path, record: dict) -> None:
    if dist.rank() == 0:
        write_json(run_dir / RESOLVED, record)


def _run_stages(pipeline: Pipeline, run_dir: Path, from_stage: str | None, fingerprints: dict, echo) -> list[StageOutcome]:
    from lifecycle import report

    if pipeline.deterministic:
        from lifecycle.environment import make_deterministic

        make_deterministic(pipeline.seed)

    outcomes: list[StageOutcome] = []
    artifacts: dict[str, Artifact] = {}
    loaded: dict = {}  # StageContext._loaded
    forced = False
    stopped = False
    params = {"pipeline": pipeline.name, "seed": pipeline.seed, "stages": ",".join(s.label for s in pipeline.stages)}
    tracked = pipeline.tracking if dist.rank() == 0 else pipeline.tracking.model_copy(update={"mlflow": None})
    with tracking.pipeline_run(tracked, pipeline.name, params) as mlflow_run:
        for stage in pipeline.stages:
            if stopped:
                outcomes.append(StageOutcome(stage.label, stage.kind, "skipped"))
                continue
            forced = forced or stage.label == from_stage
            parent_cfg = pipeline.parent_of(stage)
            parent = artifacts.get(parent_cfg.label) if parent_cfg is not None else None
            key = cache_key(pipeline, stage, parent.cache_key if parent else None, fingerprints)
            outcome = _run_stage(pipeline, stage, parent, artifacts, run_dir, key, forced, echo, loaded, mlflow_run)
            outcomes.append(outcome)
            artifacts[stage.label] = outcome.artifact
            stopped = outcome.status == "failed"
        if dist.rank() != 0:
            return outcomes
        report.write(run_dir, pipeline.name, outcomes)
        tracking.log_outcomes(mlflow_run, outcomes, run_dir)
    passed = all(o.status in ("passed", "cached") for o in outcomes)
    echo(report.summary_table(outcomes))
    echo(f"report: {run_dir / 'report.md'}")
    if any(o.artifact is not None and o.artifact.kind == "onnx-model" for o in outcomes):
        echo(f"serve it: lifecycle serve {run_dir}    (edge bundle: lifecycle bundle {run_dir} -o model.zip)")
    if not passed:
        failed = [f"[{o.name}] {g.message}" for o in outcomes for g in gatelib.blocking(o.gates)]
        raise GateFailed("gate failed: " + "; ".join(failed))
    return outcomes


def _run_stage(pipeline, stage, parent, artifacts, run_dir: Path, key: str, forced: bool, echo,
               loaded: dict, mlflow_run=None) -> StageOutcome:
    final = run_dir / stage.label
    art = None if forced else _cached(final, key, echo)
    status = "cached"
    started = time.time()
    if art is None:
        echo(f"\n== stage {stage.label} ({stage.kind})")
        for gate in stage.gates:
            ref = pipeline.reference_name(stage, gate) if gate.relative else None
            ref_v = artifacts[ref].metrics.get(gate.metric) if ref in artifacts else None
            echo(f"   gate: {gatelib.describe(gate, ref, ref_v)}{'  [warn only]' if gate.on_fail == 'warn' else ''}")
        art = _build(pipeline, stage, parent, artifacts, run_dir, key, echo, loaded, mlflow_run)
        status = "passed"
    else:
        echo(f"\n== stage {stage.label} ({stage.kind}): cached, artifact verified ({final})")
    results = check_gates(pipeline, stage, art.metrics, artifacts, candidate=art)
    if dist.rank() == 0:
        update_manifest(art, gates=[r.to_dict() for r in results])
    if gatelib.blocking(results):
        status = "failed"
    from lifecycle.report import stage_table

    echo(stage_table(stage.label, art.metrics, results))
    wait = art.metrics.get("data_wait_fraction")
    if wait is not None and wait > tracking.INPUT_BOUND:
        echo(f"   warning: input-bound: {wait:.0%} of training time waited for data "
             "(pre-tokenize, raise dataloader workers, or pack sequences)")
    return StageOutcome(stage.label, stage.kind, status, art, results, time.time() - started)


def _cached(final: Path, key: str, echo) -> Artifact | None:
    if not final.exists():
        return None
    try:
        art = Artifact.load(final)
    except ArtifactError as exc:
        echo(f"refusing artifact: {exc}; rebuilding it")
        return None
    return art if art.cache_key == key else None


def _clean_up(tmp: Path, out: Path, scratch: Path) -> None:
    from lifecycle.components.checkpoints import checkpoint_problem

    for d in (tmp, out):
        shutil.rmtree(d, ignore_errors=True)
    for d in scratch.rglob("checkpoint-*"):
        if d.is_dir() and checkpoint_problem(d) is not None:  # half-written when the disk filled up
            shutil.rmtree(d, ignore_errors=True)
    if not any(scratch.rglob("checkpoint-*")):
        shutil.rmtree(scratch, ignore_errors=True)
        if scratch.parent.is_dir() and not any(scratch.parent.iterdir()):
            scratch.parent.rmdir()


def _build(pipeline, stage, parent, artifacts, run_dir: Path, key: str, echo, loaded: dict,
           mlflow_run=None) -> Artifact:
    rank = dist.rank()
    final = run_dir / stage.label
    if rank != 0 and not stage.distributed:
        dist.barrier()  # rank 0 builds it; the others read the sealed result
        return Artifact.load(final)
    # Every rank builds into its own directory; only rank 0's is sealed into the artifact.
    tmp = inside(run_dir, run_dir / (f"{stage.label}.tmp" if rank == 0 else f"{stage.label}.rank{rank}.tmp"))
    replaceable(inside(run_dir, final))  # refused before the stage runs, not after hours of training
    inside(run_dir, run_dir / ".scratch")
    started = time.time()
    # With `seeds`, the stage runs once per seed; the artifact keeps the first seed's files and the
    # metrics become means with a 95% interval across seeds (see lifecycle.evaluation.seeds).
    per_seed, details = {}, {}
    seeds = stage.seeds or [pipeline.seed]
    for i, seed in enumerate(seeds):
        out = tmp if i == 0 else tmp.with_name(f"{tmp.name[:-4]}.seed{seed}.tmp")
        if out.exists():
            shutil.rmtree(out)  # a previous crash: never reuse a partial artifact
        suffix = "" if len(seeds) == 1 else f"-seed{seed}"
        scratch = run_dir / ".scratch" / f"{stage.label}-{key[:16]}{suffix}"
        ctx = StageContext(pipeline, stage, out, scratch, run_dir, artifacts, seed=seed, mlflow_run=mlflow_run,
                           echo=echo, _loaded=loaded)
        try:
            out.mkdir(parents=True)
            scratch.mkdir(parents=True, exist_ok=True)
            with quiet.relative_attention():  # the first forward pass may be a probe or an evaluation
                metrics, seed_details = registry.module(stage.kind).run(stage, parent, ctx)
        except Exception as exc:
            # A user-fixable error (unreadable data, diverged training, a full disk) leaves nothing behind
            # but the complete checkpoints a re-run could resume from; a crash or a kill keeps everything
            # for the resume.
            fault = None if isinstance(exc, LifecycleError) else disk_fault(exc, out)
            if fault is None and not isinstance(exc, LifecycleError):
                raise
            _clean_up(tmp, out, scratch)
            if fault is not None:
                raise fault from None
            raise
        per_seed[seed] = metrics
        details = details or seed_details  # the first seed's (the artifact keeps its files)
        if i > 0:
            shutil.rmtree(out, ignore_errors=True)
    if len(seeds) > 1:
        metrics = seeds_mod.aggregate(per_seed)
        details = {**details, "seeds": {str(k): v for k, v in per_seed.items()}, "interval": seeds_mod.METHOD}
    else:
        metrics = per_seed[seeds[0]]
    if rank != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        return Artifact.load(final)
    holds = pipeline.holds(stage)
    manifest = {
        "kind": artifact_kind(holds),  # hf-model / onnx-model: what readers of older artifacts check
        "holds": holds,
        "stage": stage.label,
        "stage_kind": stage.kind,
        "parent": {"path": str(parent.path), "cache_key": parent.cache_key, "digest": parent.digest} if parent else None,
        "config": stage.model_dump(mode="json"),
        "cache_key": key,
        "data": {name: src.fingerprint(pipeline) for name, src in pipeline.data.items()},
        "metrics": metrics,
        "details": details,
        "environment": environment(),
        "timings": {"started": started, "seconds": round(time.time() - started, 3)},
        "lifecycle_version": __version__,
    }
    if pins := hub_pins(pipeline, stage):
        manifest["hub"] = pins
    try:
        art = commit(tmp, final, manifest)
    except OSError as exc:
        if (fault := disk_fault(exc, tmp)) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # complete checkpoints stay: the re-run resumes past training
        raise fault from None
    for seed in seeds:
        suffix = "" if len(seeds) == 1 else f"-seed{seed}"
        shutil.rmtree(run_dir / ".scratch" / f"{stage.label}-{key[:16]}{suffix}", ignore_errors=True)
    dist.barrier()
    return art
