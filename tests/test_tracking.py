"""Per-step metrics, input-bound detection, MLflow logging and deterministic runs, on real tiny runs."""

import json

from conftest import tiny_pipeline

from lifecycle import pipeline as orchestration
from lifecycle.artifact import Artifact
from lifecycle.config import build

TIMING = ("latency", "seconds", "data_wait", "tokens_per_s", "samples_per_s")


def finetune_only(**overrides):
    raw = tiny_pipeline(**overrides)
    raw["stages"] = raw["stages"][:1]
    return raw


def test_training_writes_per_step_metrics_and_data_wait(tmp_path):
    orchestration.run(build(finetune_only()), workdir=tmp_path, echo=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "metrics" / "finetune.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("eval_loss" in r for r in rows)
    assert all("step" in r and "time" in r for r in rows)
    art = Artifact.load(tmp_path / "tiny" / "finetune")
    assert 0.0 <= art.metrics["data_wait_fraction"] < 1.0


def test_mlflow_logs_to_the_release_store(tmp_path, plots, monkeypatch):
    """`tracking.mlflow: true` logs into the store releases are registered in: here $LIFECYCLE_REGISTRY's
    SQLite database, with the run's artifacts beside it (not in ./mlruns)."""
    import mlflow  # the [mlflow] extra, which `make setup` installs: a broken install fails here, never skips

    from lifecycle import tracking

    store = tmp_path / "store"
    monkeypatch.setenv("LIFECYCLE_REGISTRY", str(store))
    monkeypatch.chdir(tmp_path)
    raw = finetune_only(tracking={"mlflow": True, "experiment": "tests"})
    orchestration.run(build(raw), workdir=tmp_path / "runs", echo=lambda *a: None)

    mlflow.set_tracking_uri(tracking.store_uri())
    assert tracking.store_uri() == f"sqlite:///{store / 'mlflow.db'}" and not (tmp_path / "mlruns").exists()
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert parent.data.params["pipeline"] == "tiny" and parent.data.tags["passed"] == "true"
    assert "finetune.accuracy" in parent.data.metrics and parent.data.metrics["gate.finetune.accuracy.passed"] == 1.0
    assert "train_loss" in child.data.metrics or "loss" in child.data.metrics  # the Trainer's own MLflow callback
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"report.json", "report.md", "junit.xml", "plots"} <= names
    assert parent.info.artifact_uri.startswith((store / "artifacts").as_uri())


def test_deterministic_runs_give_identical_metrics_and_weights(tmp_path):
    raw = finetune_only(deterministic=True)
    arts = []
    for i in range(2):
        orchestration.run(build(raw), workdir=tmp_path / str(i), echo=lambda *a: None)
        arts.append(Artifact.load(tmp_path / str(i) / "tiny" / "finetune"))
    a, b = arts
    assert a.manifest["files"] == b.manifest["files"]  # identical sha256 of weights, tokenizer, config
    same = {k: v for k, v in a.metrics.items() if not any(t in k for t in TIMING)}
    assert same == {k: b.metrics[k] for k in same}
