"""Transfer evidence: a from-scratch control beside the pre-trained model, and a classical baseline."""

import pytest
from conftest import TESTS

from lifecycle import ConfigError
from lifecycle import pipeline as orchestration
from lifecycle.artifact import Artifact
from lifecycle.config import build

NEWS = str(TESTS / "data" / "news_tiny.jsonl")


def pretrain_then_finetune(finetune_extra: dict, gates=None) -> dict:
    return {
        "name": "transfer",
        "data": {"news": {"format": "jsonl", "path": NEWS, "split": {"validation": 0.2, "test": 0.2}}},
        "task": {"data": "news", "max_length": 48},
        "stages": [
            {"kind": "pretrain", "data": "news", "block_size": 32,
             "model": {"preset": "bert-tiny", "tokenizer": {"vocab_size": 800}},
             "train": {"max_steps": 6, "batch_size": 16, "lr": 1e-3, "logging_steps": 2}},
            {"kind": "finetune", "train": {"epochs": 2, "batch_size": 32, "lr": 2e-3, "logging_steps": 2},
             "latency": {"runs": 3}, "metric": "accuracy", "collapse_min": None,  # 2 epochs: may predict one class
             **finetune_extra, "gates": gates or []},
        ],
    }


def test_control_and_baseline_are_reported_and_gateable(tmp_path):
    """The control is a separate model trained on its own budget: starved here (one step at lr 1e-9),
    it must score near chance (5 balanced labels: 0.2) whatever the main model scores. The baseline is
    the TF-IDF model of the task's own train/test split (tests/test_baseline.py checks it on known data)."""
    from lifecycle import data as datalib
    from lifecycle.workloads.text.baseline import tfidf_logreg

    starved = {"train": {"max_steps": 1, "batch_size": 32, "lr": 1e-9}}
    raw = pretrain_then_finetune({"control": starved, "baseline": True},
                                 gates=[{"metric": "pretraining_gain", "min": -1.0}])
    pipeline = build(raw)
    orchestration.run(pipeline, workdir=tmp_path, echo=lambda *a: None)
    m = Artifact.load(tmp_path / "transfer" / "finetune").metrics
    assert m["control_accuracy"] < 0.4, m  # an untrained classifier: chance, not the main model's score
    assert m["pretraining_gain"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
    task = datalib.load(pipeline.data["news"], pipeline)
    assert m["baseline_tfidf_accuracy"] == pytest.approx(tfidf_logreg(task, seed=pipeline.seed)["baseline_tfidf_accuracy"])
    assert m["baseline_tfidf_accuracy"] > 0.6  # news topics from their words: far above chance
    # the control trains its own model: the artifact still holds exactly one (the pre-trained one)
    assert not any(p.name.startswith("control") for p in (tmp_path / "transfer" / "finetune").iterdir())


def test_gate_on_an_unknown_transfer_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot produce 'adaptation_gainz'"):
        build(pretrain_then_finetune({}, gates=[{"metric": "adaptation_gainz", "min": 0}]))


def test_adaptation_probe_gain_and_transfer_plot(tmp_path, plots):
    probe = {"data": "news", "max_length": 32, "limit": 120}
    raw = pretrain_then_finetune({})
    pre = raw["stages"][0]
    pre.update(probe={**probe, "every_eval": True})
    pre["train"].update(max_steps=8, eval_steps=4, save_steps=4)
    raw["stages"][1] = {"kind": "adapt", "data": "news", "block_size": 32, "probe": probe,
                        "train": {"max_steps": 4, "batch_size": 16, "lr": 1e-3, "eval_steps": 4, "save_steps": 4},
                        "gates": [{"metric": "adaptation_probe_gain", "min": -1.0}]}
    orchestration.run(build(raw), workdir=tmp_path, echo=lambda *a: None)
    run_dir = tmp_path / "transfer"
    points = Artifact.load(run_dir / "pretrain").manifest["details"]["transfer"]
    assert [p["step"] for p in points] == [4, 8]
    # 5 balanced topics: chance is 0.2; 0.3 is two standard errors above it on the 60 validation texts
    assert all(p["perplexity"] > 1 and p["probe_accuracy"] > 0.3 for p in points), points
    m = Artifact.load(run_dir / "adapt").metrics
    assert m["adaptation_probe_gain"] == pytest.approx(m["probe_accuracy"] - m["probe_accuracy_before"])
    assert (run_dir / "plots" / "transfer.png").is_file()
