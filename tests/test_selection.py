"""Select on validation, report on test: the quantize ladder picks its rung by validation scores, and the
test split is scored once, on the rung kept."""

import json
import random

import yaml
from conftest import TESTS

from lifecycle.cli import main

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def test_the_ladder_chooses_by_validation_even_when_test_disagrees(tmp_path):
    rows = [json.loads(line) for line in (TESTS / "data" / "news_tiny.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(rows)
    train, val, test = rows[:180], rows[180:240], rows[240:]
    # Every test label moved to the next class: a model that learnt the task scores near 0 on test,
    # while validation is as honest as train. A ladder that chose by test would reject every rung.
    test = [{**r, "label": LABELS[(LABELS.index(r["label"]) + 1) % len(LABELS)]} for r in test]
    for name, part in (("train", train), ("validation", val), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    raw = {
        "name": "select", "seed": 0,
        "data": {"news": {"format": "jsonl", "train": "train.jsonl", "validation": "validation.jsonl",
                          "test": "test.jsonl"}},
        "task": {"data": "news", "max_length": 48},
        "stages": [
            {"kind": "finetune", "model": {"preset": "bert-tiny", "tokenizer": {"vocab_size": 800}},
             "train": {"epochs": 15, "batch_size": 16, "lr": 1e-3}, "latency": {"runs": 3}},  # ~20 s
            {"kind": "export", "latency": {"runs": 3}},
            {"kind": "quantize", "fallback": ["dynamic-int8", "none"], "latency": {"runs": 3, "batch32": False},
             "min_speedup": None,
             "gates": [{"metric": "accuracy", "min": 0.3}]},
        ],
    }
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(raw))
    code = main(["run", str(tmp_path / "select.yaml"), "--workdir", str(tmp_path / "runs")])
    run_dir = tmp_path / "runs" / "select"
    export = json.loads((run_dir / "export" / "manifest.json").read_text())["metrics"]
    assert export["val_accuracy"] >= 0.45 and export["accuracy"] <= 0.2, export  # the split disagreement holds
    manifest = json.loads((run_dir / "quantize" / "manifest.json").read_text())
    attempts = manifest["details"]["attempts"]
    # the first rung passes on validation and is kept; test is then scored once and fails the stage's gate
    assert [a["method"] for a in attempts] == ["dynamic-int8"] and attempts[0]["split"] == "validation"
    assert attempts[0]["metrics"]["accuracy"] >= 0.3 and manifest["details"]["method"] == "dynamic-int8"
    metrics = manifest["metrics"]
    assert metrics["accuracy"] < 0.3 and metrics["val_accuracy"] == attempts[0]["metrics"]["accuracy"]
    assert code == 3
