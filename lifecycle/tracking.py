"""Experiment tracking: per-step metrics in the run directory (always), input-bound detection, and,
with the `mlflow` extra installed and `tracking.mlflow` set, a run in the MLflow store that the
release registry (lifecycle.release) uses too.

Per-step metrics are appended to `<run>/metrics/<stage>.jsonl` as training goes, outside the
artifact, so a crash loses nothing that was logged. MLflow goes through the ecosystem's own
integration: transformers' MLflowCallback logs each training stage as a nested run; the pipeline run
holds the stage metrics, the gate verdicts and the report.

The store (`store_uri`): by default a real database with no server to start, MLflow's SQLite backend
at ~/.lifecycle/mlflow/mlflow.db with its artifacts beside it; $LIFECYCLE_REGISTRY (or `--registry`)
names another directory (or an MLflow URI); $MLFLOW_TRACKING_URI points every machine of a team at one
tracking server (`mlflow server`) instead.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lifecycle.schema import Strict

INPUT_BOUND = 0.2  # warn when more than this share of training time waits for data


DEFAULT_STORE = "~/.lifecycle/mlflow"  # mlflow.db (SQLite) and artifacts/
DATABASE, ARTIFACTS = "mlflow.db", "artifacts"


class Tracking(Strict):
    # true: the store releases live in (see store_uri); or a directory (a SQLite store in it) or an MLflow URI
    # (http://host:5000, sqlite:///path.db, postgresql://...). Needs `pip install 'lifecycle[mlflow]'`.
    mlflow: bool | str | None = None
    experiment: str | None = None  # MLflow experiment; default: the pipeline name


def store_uri(where: str | Path | None = None) -> str:
    """The MLflow tracking and registry URI: `where` (a directory, for a SQLite store in it, or an MLflow
    URI), else $LIFECYCLE_REGISTRY (the same), else $MLFLOW_TRACKING_URI, else SQLite under ~/.lifecycle.
    Nothing is created here: a store that was never written to is created by its first write."""
    from lifecycle import LifecycleError

    where = str(where or os.environ.get("LIFECYCLE_REGISTRY") or os.environ.get("MLFLOW_TRACKING_URI")
                or DEFAULT_STORE)
    if "://" in where or where.startswith(("databricks", "file:")):
        return where
    root = Path(where).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LifecycleError(f"{root}: a file, not a registry directory; point --registry (or $LIFECYCLE_REGISTRY) "
                             "at a directory or an MLflow URI")
    if (root / "aliases.json").is_file() or (root / "versions").is_dir():
        raise LifecycleError(f"{root}: a folder registry of an older lifecycle (versions/, aliases.json), no longer "
                             f"read; copy its releases into MLflow with `python -m lifecycle.promotion migrate {root}`, "
                             "or point --registry (or $LIFECYCLE_REGISTRY) at another directory")
    return f"sqlite:///{root / DATABASE}"


def local_root(uri: str) -> Path | None:
    """The directory of a SQLite store this module names (its database and artifacts), else None."""
    if uri.startswith("sqlite:///") and uri.endswith("/" + DATABASE):
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def client(uri: str):
    """An MlflowClient on `uri` for tracking and the registry (the directory of a SQLite store is created)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        from lifecycle import ConfigError

        raise ConfigError("the MLflow store needs MLflow: pip install 'lifecycle[mlflow]'") from None
    import logging

    # a command prints one line: no download bars, and not the INFO lines a new SQLite store logs while
    # MLflow creates its tables
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if (root := local_root(uri)) is not None:
        root.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The id of experiment `name`, created if new. A SQLite store keeps its artifacts beside its database
    (MLflow would use ./mlruns under the current directory); a server decides for itself."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = local_root(uri)
    try:
        return mlflow_client.create_experiment(name, artifact_location=(root / ARTIFACTS).as_uri() if root else None)
    except MlflowException:  # created meanwhile by another process
        return mlflow_client.get_experiment_by_name(name).experiment_id


def step_logger(path: Path):
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """Appends every Trainer log row (loss, lr, eval metrics by step) to a JSON-lines file."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, "time": time.time(), **logs}) + "\n")

    return StepLog()


def time_data_wait(trainer) -> dict:
    """Wrap Trainer.get_batch_samples (where the training loop pulls batches from the dataloader) to
    measure how long training waits for data. Returns the live counters."""
    counters = {"data_wait_seconds": 0.0}
    fetch = trainer.get_batch_samples

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fetch(*args, **kwargs)
        finally:
            counters["data_wait_seconds"] += time.perf_counter() - t0

    trainer.get_batch_samples = timed
    return counters


def mlflow_callback():
    """transformers' own MLflow integration, one run per training stage nested in the pipeline's run
    (which pipeline_run opened and the stage context carries)."""
    from transformers.integrations import MLflowCallback

    class NestedRun(MLflowCallback):
        # transformers nests only when told so by the MLFLOW_NESTED_RUN variable; opening the nested run
        # here, before its setup, has the same effect without changing this process's environment.
        def setup(self, args, state, model):
            if state.is_world_process_zero:
                self._ml_flow.start_run(run_name=args.run_name, nested=True)
                self._auto_end_run = True
            super().setup(args, state, model)

    return NestedRun()


@contextmanager
def pipeline_run(tracking: Tracking, pipeline_name: str, params: dict):
    """Open an MLflow run for the pipeline when tracking.mlflow is set and yield it (stages get it
    through their context, and train a nested run only with it); yield None otherwise."""
    if tracking.mlflow is None or tracking.mlflow is False:
        yield None
        return
    uri = store_uri(None if tracking.mlflow is True else tracking.mlflow)
    experiment = experiment_id(client(uri), tracking.experiment or pipeline_name, uri)
    import mlflow

    # transformers' MLflowCallback logs through the fluent API, which reads these process-wide settings
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment)
    with mlflow.start_run(run_name=pipeline_name) as run:
        mlflow.log_params(params)
        yield run


def log_outcomes(run, outcomes, run_dir: Path) -> None:
    """Stage metrics, gate verdicts and the report files into the pipeline's MLflow run."""
    if run is None:
        return
    import mlflow

    for o in outcomes:
        if o.artifact is None:
            continue
        numeric = {f"{o.name}.{k}": float(v) for k, v in o.artifact.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow.log_metrics(numeric)
        for g in o.gates:
            mlflow.log_metric(f"gate.{o.name}.{g.metric}.passed", float(g.passed))
    mlflow.set_tag("passed", str(all(o.status in ("passed", "cached") for o in outcomes)).lower())
    for name in ("report.json", "report.md", "junit.xml"):
        if (run_dir / name).is_file():
            mlflow.log_artifact(str(run_dir / name))
    if (run_dir / "plots").is_dir():
        mlflow.log_artifacts(str(run_dir / "plots"), artifact_path="plots")
