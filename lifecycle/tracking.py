"""Experiment tracking: per-step metrics in the run directory (always), input-bound detection, and,
with the `mlflow` extra installed and `tracking.mlflow` set, a run in a local MLflow store.

Per-step metrics are appended to `<run>/metrics/<stage>.jsonl` as training goes, outside the
artifact, so a crash loses nothing that was logged. MLflow goes through the ecosystem's own
integration: transformers' MLflowCallback logs each training stage as a nested run; the pipeline run
holds the stage metrics, the gate verdicts and the report.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lifecycle.schema import Strict

INPUT_BOUND = 0.2  # warn when more than this share of training time waits for data


class Tracking(Strict):
    mlflow: str | None = None  # a directory for a local MLflow file store (needs `pip install lifecycle[mlflow]`)
    experiment: str | None = None  # MLflow experiment; default: the pipeline name


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
    if not tracking.mlflow:
        yield None
        return
    try:
        import mlflow
    except ImportError:
        from lifecycle import ConfigError

        raise ConfigError("tracking.mlflow is set but MLflow is not installed: pip install 'lifecycle[mlflow]'") from None
    store = Path(tracking.mlflow).resolve()
    # MLflow 3 keeps its file store "in maintenance" behind this switch; a local file store is what
    # we want here (no database server, browsable with `mlflow ui --backend-store-uri`).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(store.as_uri())
    mlflow.set_experiment(tracking.experiment or pipeline_name)
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
