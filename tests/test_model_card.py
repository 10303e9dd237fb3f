"""lifecycle.model_card: the card of a sealed artifact names its task and labels, data fingerprints,
metrics with their seed intervals, every gate verdict, the environment, the lineage by hash, and the
weaknesses recorded in the manifests; it is a pure function of them (same artifact, same bytes).
The bundle and registry tests check that real bundles and registry entries carry it."""

from __future__ import annotations

import json

from lifecycle import model_card
from lifecycle.artifact import Artifact, commit
from lifecycle.environment import environment
from lifecycle.evaluation import write_predictions


def seal(tmp_path, name: str, manifest: dict, files: dict[str, str] | None = None) -> Artifact:
    tmp = tmp_path / "run" / f"{name}.tmp"
    tmp.mkdir(parents=True)
    for rel, text in (files or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return commit(tmp, tmp_path / "run" / name, {"stage": name, "cache_key": f"key-{name}" * 4, **manifest})


def test_card_sections_lineage_and_limitations(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pipeline.json").write_text(json.dumps({"pipeline": {
        "task": {"type": "classification", "data": "news", "max_length": 48},
        "data": {"news": {"format": "jsonl", "path": "news.jsonl", "limit": None}}}}))
    parent = seal(tmp_path, "pretrain", {"kind": "hf-model", "stage_kind": "pretrain", "metrics": {"perplexity": 40.0},
                                         "gates": [{"metric": "perplexity", "bound": "perplexity <= 100", "value": 40.0,
                                                    "passed": True, "on_fail": "stop"}]})
    preds = tmp_path / "preds.jsonl"
    write_predictions(preds, [f"text {i}" for i in range(50)], [i % 2 for i in range(50)], [0] * 50)
    metrics = {"accuracy": 0.5, "accuracy_ci_low": 0.45, "accuracy_ci_high": 0.55, "accuracy_std": 0.02,
               "pretraining_gain": -0.03, "baseline_tfidf_accuracy": 0.9}
    gates = [{"metric": "accuracy", "bound": "accuracy >= 0.6", "value": 0.5, "passed": False, "on_fail": "warn",
              "message": "accuracy = 0.5 violates accuracy >= 0.6"},
             {"metric": "accuracy", "bound": "accuracy drop vs release:production <= 0.01", "value": 0.5, "passed": True,
              "on_fail": "stop", "interval": [-0.02, 0.01], "p_value": 0.42}]
    child = seal(tmp_path, "finetune", {
        "kind": "hf-model", "stage_kind": "finetune", "metrics": metrics, "gates": gates,
        "parent": {"path": str(parent.path), "cache_key": parent.cache_key, "digest": parent.digest},
        "data": {"news": "ab" * 32}, "details": {"labels": ["business", "sport"]}, "environment": environment(),
        "lifecycle_version": "0.1.0"}, {"predictions/test.jsonl": preds.read_text()})

    card = model_card.render(child)
    assert card == model_card.render(Artifact.load(child.path))  # a pure function of the manifests
    for section in ("## Intended task", "## Data", "## Metrics", "## Gates", "## Environment", "## Lineage",
                    "## Limitations found by the run"):
        assert section in card
    assert "classification into 2 labels: business, sport" in card and "truncated to 48 tokens" in card
    assert f"| news | `{'ab' * 8}` |" in card and "50 examples (test fingerprint" in card
    assert "| accuracy | 0.5 | [0.45, 0.55] across seeds |" in card and "accuracy_std" not in card
    assert "| [-0.0200, +0.0100] p=0.42 | pass |" in card and "| finetune | `accuracy >= 0.6` | 0.5 | - | warn |" in card
    assert card.index(f"| pretrain | pretrain | `{parent.cache_key[:16]}` | `{parent.digest[:16]}` |") < card.index(
        f"| finetune | finetune | `{child.cache_key[:16]}` | `{child.digest[:16]}` |")
    assert "| pretrain | `perplexity <= 100` | 40 | - | pass |" in card  # the parents' gates too
    limits = card.split("## Limitations found by the run")[1]
    assert "pretraining_gain -0.0300" in limits and "TF-IDF" in limits and "(warn only)" in limits
    assert "the test set has 50 examples" in limits

    # a parent removed from disk ends the lineage with what the child recorded of it
    import shutil

    shutil.rmtree(parent.path)
    chain = model_card.lineage(Artifact.load(child.path))
    assert [s["stage"] for s in chain] == ["pretrain", "finetune"] and chain[0]["digest"] == parent.digest
