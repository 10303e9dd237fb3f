"""finetune stage: full and LoRA fine-tuning, class weights, early stopping with the best checkpoint kept,
multi-label, crash-resume, and gates through the CLI. Real Trainer steps on a 2-layer, hidden-64 model
and a keyword task it learns in a few seconds."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifecycle import config, pipeline
from lifecycle.cli import main

TOPICS = {"food": "recipe bread cheese soup chef oven spice dessert",
          "sports": "goal match league striker coach stadium referee trophy",
          "tech": "software chip laptop server code robot network startup",
          "travel": "flight hotel beach passport museum island train ticket"}
FILLER = ("the a of and to in on with for this that it was is at by from people day week year new old good "
          "many some more most time place").split()
MODEL = {"preset": "bert-tiny", "tokenizer": {"vocab_size": 200, "min_frequency": 1}}
TRAIN = {"epochs": 8, "batch_size": 16, "lr": 2.0e-3, "warmup_ratio": 0.1, "logging_steps": 5}


def keyword_data(path: Path, n: int = 200, seed: int = 0, multi: bool = False, skew: bool = False) -> Path:
    """Texts of 3 topic words per label among 7 filler words; `multi`: half the rows carry two labels,
    written "a|b"; `skew`: 70% of the rows are 'food'."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    with open(path, "w") as f:
        for i in range(n):
            labels = [names[i % 4]]
            if skew:
                labels = ["food"] if rng.random() < 0.7 else [rng.choice(names[1:])]
            if multi and rng.random() < 0.5:
                labels = rng.sample(names, 2)
            words = [w for lab in labels for w in rng.sample(TOPICS[lab].split(), 3)] + rng.sample(FILLER, 7)
            rng.shuffle(words)
            f.write(json.dumps({"text": " ".join(words), "label": "|".join(sorted(labels))}) + "\n")
    return path


def raw_pipeline(data: Path, stages: list[dict], name: str = "ft") -> dict:
    return {"name": name, "seed": 0,
            "data": {"kw": {"format": "jsonl", "path": str(data), "split": {"validation": 0.2, "test": 0.2}}},
            "task": {"data": "kw", "max_length": 24}, "stages": stages}


def run(raw: dict, workdir: Path):
    outcomes = pipeline.run(config.build(raw, base_dir=workdir), workdir=workdir, echo=lambda *a: None)
    return {o.name: o.artifact for o in outcomes}


def logits(model_dir: Path, texts: list[str], model=None):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = model or AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        return model.eval()(**tok(texts, return_tensors="pt", padding=True)).logits.numpy()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One full fine-tune, shared by the tests below (the LoRA test starts from it)."""
    tmp = tmp_path_factory.mktemp("base")
    data = keyword_data(tmp / "kw.jsonl")
    art = run(raw_pipeline(data, [{"kind": "finetune", "model": MODEL, "train": TRAIN}]), tmp)["finetune"]
    return data, art


def test_full_finetune_learns_and_reports(base):
    _, art = base
    files = {p.name for p in art.path.iterdir()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "manifest.json", "predictions"}
    m = art.metrics
    assert m["accuracy"] >= 0.8 and m["f1_micro"] == pytest.approx(m["accuracy"]) and 0 < m["f1_macro"] <= 1
    assert m["torch_latency_p50_ms"] <= m["torch_latency_p95_ms"] <= m["torch_latency_p99_ms"]
    assert (m["latency_batch_size"], m["latency_seq_len"]) == (1, 24) and m["latency_threads"] >= 1
    assert m["params_trainable"] == m["params_total"] > 100_000 and m["trainable_fraction"] == 1.0
    assert m["val_f1_micro"] == pytest.approx(art.manifest["details"]["best_metric"])  # the best checkpoint is kept
    assert "checkpoint-" in art.manifest["details"]["best_checkpoint"]


def test_lora_trains_few_parameters_and_merges(base, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    data, parent = base
    stage = {"kind": "finetune", "model": {"path": str(parent.path)}, "lora": {"r": 4, "alpha": 8},
             "train": {**TRAIN, "epochs": 2, "lr": 1.0e-2}}
    art = run(raw_pipeline(data, [stage], name="lora"), tmp_path)["finetune"]
    assert {p.name for p in (art.path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    # adapters + the head path (pooler 64x64 + classifier): ~4% of this 100k-parameter model, <1% of MiniLM
    assert art.metrics["trainable_fraction"] < 0.05 and art.metrics["params_trainable"] < art.metrics["params_total"]
    assert art.metrics["lora_merge_max_abs_diff"] < 1e-5

    texts = ["chef soup bread the of", "flight hotel was new", "code robot server it"]
    adapted = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(parent.path),
                                        art.path / "adapter")
    np.testing.assert_allclose(logits(art.path, texts), logits(art.path, texts, adapted), atol=1e-5)
    before, after = load_file(parent.path / "model.safetensors"), load_file(art.path / "model.safetensors")
    changed = {k for k in after if not np.array_equal(before[k].numpy(), after[k].numpy())}
    # Only the LoRA targets (query, value) and the head path (pooler + classifier, trained in full) changed,
    # merged into plain weights.
    assert changed and all(".query." in k or ".value." in k or k.startswith(("classifier.", "bert.pooler."))
                           for k in changed)
    assert art.manifest["details"]["trained_in_full"] == ["bert.pooler"]
    assert any(".query." in k for k in changed) and not any("lora" in k for k in after)


def test_lora_from_a_masked_lm_trains_its_new_pooler_in_full_and_adapts_embeddings(base, tmp_path):
    """A masked-LM parent has no pooler: BERT's classifier reads the [CLS] vector through a new, random
    pooler, which the stage trains in full (an adapter on a frozen random matrix learns next to nothing)."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoConfig, BertForMaskedLM

    data, parent = base
    mlm_dir = tmp_path / "mlm"
    BertForMaskedLM(AutoConfig.from_pretrained(parent.path)).save_pretrained(mlm_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(parent.path / name, mlm_dir / name)
    stage = {"kind": "finetune", "model": {"path": str(mlm_dir)},
             "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value", "dense", "word_embeddings"]},
             "train": {**TRAIN, "epochs": 1, "lr": 1.0e-2}, "collapse_min": None}  # one epoch from random weights
    art = run(raw_pipeline(data, [stage], name="lora-mlm"), tmp_path)["finetune"]
    assert art.manifest["details"]["trained_in_full"] == ["bert.pooler"]
    assert art.metrics["lora_merge_max_abs_diff"] < 1e-5
    after = load_file(art.path / "model.safetensors")
    # Trained in full: the adapter file carries the whole pooler, and the merged model holds exactly it.
    saved = {k: v for k, v in load_file(art.path / "adapter" / "adapter_model.safetensors").items()
             if "pooler.dense" in k and k.endswith("weight")}
    assert len(saved) == 1
    np.testing.assert_array_equal(next(iter(saved.values())).numpy(), after["bert.pooler.dense.weight"].numpy())
    before = load_file(mlm_dir / "model.safetensors")
    emb = "bert.embeddings.word_embeddings.weight"
    assert not np.array_equal(before[emb].numpy(), after[emb].numpy())  # the embedding adapter was merged in


def test_lora_on_a_mean_pooling_encoder_pools_like_it_and_trains_the_head_path(base, tmp_path):
    """An encoder that declares mean pooling (a sentence-transformers folder) gets a head that reads the
    token mean; LoRA trains that head path (pooler + classifier) in full; the exported ONNX graph pools
    the same way (its logits match lifecycle's loader, not a plain [CLS] transformers load)."""
    import shutil

    from safetensors.torch import load_file

    from lifecycle import models
    from lifecycle.edge import Predictor

    data, parent = base
    encoder = tmp_path / "st-encoder"
    shutil.copytree(parent.path, encoder)
    (encoder / "manifest.json").unlink()
    (encoder / "1_Pooling").mkdir()
    (encoder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    stages = [{"kind": "finetune", "model": {"path": str(encoder)}, "lora": {"r": 4, "alpha": 8},
               "train": {**TRAIN, "epochs": 2, "lr": 1.0e-2}},
              {"kind": "export", "optimize": False, "latency": {"runs": 2, "warmup": 0, "batch32": False}}]
    arts = run(raw_pipeline(data, stages, name="lora-mean"), tmp_path)
    art = arts["finetune"]
    assert art.manifest["details"]["head_pooling"] == "mean"
    assert json.loads((art.path / "config.json").read_text())["head_pooling"] == "mean"
    assert art.manifest["details"]["trained_in_full"] == ["bert.pooler"]
    before, after = load_file(encoder / "model.safetensors"), load_file(art.path / "model.safetensors")
    for key in ("bert.pooler.dense.weight", "classifier.weight"):
        assert not np.array_equal(before[key].numpy(), after[key].numpy()), key
    assert art.metrics["accuracy"] >= 0.8 and art.metrics["minority_prediction_ratio"] > 0.5

    texts = ["chef soup bread the of", "flight hotel was new", "code robot server it"]
    from transformers import AutoModelForSequenceClassification

    ours = models.load_model(AutoModelForSequenceClassification, art.path).eval()
    onnx = Predictor.open(arts["export"].path).logits(texts)
    np.testing.assert_allclose(onnx, logits(art.path, texts, ours), atol=1e-4)
    # a plain transformers load reads [CLS]: different logits, so the mean really is in the graph
    assert np.abs(onnx - logits(art.path, texts)).max() > 1e-3
    assert arts["export"].metrics["parity_max_abs_diff"] < 1e-4


def test_collapse_metrics():
    from lifecycle.components.classification import collapse_metrics

    targets = [0] * 87 + [1] * 13
    one_class = np.tile([1.0, 0.0], (100, 1))  # always class 0
    m = collapse_metrics(one_class, targets, 2)
    assert m == {"majority_prediction_fraction": 1.0, "majority_label_fraction": 0.87, "minority_prediction_ratio": 0.0}
    perfect = np.eye(2)[targets]
    assert collapse_metrics(perfect, targets, 2)["minority_prediction_ratio"] == pytest.approx(1.0)
    assert collapse_metrics(one_class, [0] * 10, 2)["minority_prediction_ratio"] == 1.0  # labels all one class


def test_collapse_gate_fails_a_collapsed_model_and_passes_a_healthy_one(base, tmp_path, capsys):
    from lifecycle import GateFailed
    from lifecycle import config as cfglib
    from lifecycle.artifact import Artifact

    _, healthy = base
    assert healthy.metrics["minority_prediction_ratio"] > 0.5
    assert any(g["metric"] == "minority_prediction_ratio" and g["passed"] for g in healthy.manifest["gates"])
    # Only 'food' carries loss: the model learns to predict food for everything (25% of the labels).
    data = keyword_data(tmp_path / "kw.jsonl", n=120)
    stage = {"kind": "finetune", "model": MODEL, "train": {**TRAIN, "epochs": 3}, "collapse_on_fail": "stop",
             "class_weights": {"food": 1.0, "sports": 1e-6, "tech": 1e-6, "travel": 1e-6}}
    said: list[str] = []  # the run's echo: the stage warns through it, not on its own stream
    with pytest.raises(GateFailed, match="minority_prediction_ratio"):
        pipeline.run(cfglib.build(raw_pipeline(data, [stage], name="collapse"), base_dir=tmp_path),
                     workdir=tmp_path, echo=said.append)
    art = Artifact.load(tmp_path / "collapse" / "finetune")
    m = art.metrics
    assert m["majority_prediction_fraction"] > 0.95 and m["minority_prediction_ratio"] < 0.2
    assert [g["metric"] for g in art.manifest["gates"] if not g["passed"]] == ["minority_prediction_ratio"]
    assert any("warning: prediction collapse" in line for line in said), said
    assert "prediction collapse" not in capsys.readouterr().err
    assert "class imbalance" in art.manifest["details"]["collapse_warning"]
    # by default the gate warns (the run goes on, the report shows it); it can be switched off
    warn = cfglib.build(raw_pipeline(data, [{**stage, "collapse_on_fail": "warn"}]), base_dir=tmp_path)
    assert [g.on_fail for g in warn.stages[0].gates if g.metric == "minority_prediction_ratio"] == ["warn"]
    off = cfglib.build(raw_pipeline(data, [{**stage, "collapse_min": None}]), base_dir=tmp_path)
    assert not any(g.metric == "minority_prediction_ratio" for g in off.stages[0].gates)


def test_class_weights_balanced_are_used_in_the_loss(tmp_path):
    import torch
    import torch.nn.functional as F

    data = keyword_data(tmp_path / "skew.jsonl", n=100, skew=True)
    # 3 epochs on 60 skewed rows may still predict only 'food': the loss, not the model, is checked here
    stage = {"kind": "finetune", "model": MODEL, "class_weights": "balanced", "train": {**TRAIN, "epochs": 3},
             "collapse_min": None}
    art = run(raw_pipeline(data, [stage]), tmp_path)["finetune"]
    weights = art.manifest["details"]["class_weights"]
    assert weights["food"] < 1 < min(v for k, v in weights.items() if k != "food")  # the majority class counts less

    # eval_loss is the weighted cross-entropy of the kept model on validation (one eval batch)
    p = config.build(raw_pipeline(data, [stage]), base_dir=tmp_path)
    from lifecycle import data as datalib

    val = datalib.load(p.data["kw"], p).splits["validation"]
    out = torch.tensor(logits(art.path, list(val["text"])))
    w = torch.tensor([weights[n] for n in sorted(weights)])
    target = torch.tensor(list(val["label"]))
    assert art.metrics["eval_loss"] == pytest.approx(F.cross_entropy(out, target, weight=w).item(), rel=1e-4)
    assert art.metrics["eval_loss"] != pytest.approx(F.cross_entropy(out, target).item(), rel=1e-3)


def test_class_weight_options():
    from lifecycle import LifecycleError
    from lifecycle.components.classification import LabelSpace, class_weights

    single = LabelSpace(["a", "b"], [0, 1], multi=False)
    assert class_weights("balanced", [0, 0, 0, 1], single) == pytest.approx([4 / 6, 2.0])
    assert class_weights({"b": 3.0}, [0, 1], single) == [1.0, 3.0]
    with pytest.raises(LifecycleError, match="unknown labels"):
        class_weights({"c": 2.0}, [0, 1], single)
    multi = LabelSpace(["a", "b"], [[1, 0], [0, 1]], multi=True)
    assert class_weights("balanced", [[1, 0], [1, 0], [1, 1], [0, 0]], multi) == pytest.approx([1 / 3, 3.0])


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tmp_path):
    data = keyword_data(tmp_path / "kw.jsonl", n=80)
    # lr ~ 0: the metric never improves after the first evaluation, so patience 2 stops at step 6 of 60
    train = {**TRAIN, "lr": 1.0e-9, "max_steps": 60, "eval_steps": 2}
    stage = {"kind": "finetune", "model": MODEL, "metric": "f1_macro", "early_stopping": {"patience": 2},
             "train": train, "collapse_min": None}  # an untrained model predicts one class
    art = run(raw_pipeline(data, [stage]), tmp_path)["finetune"]
    assert art.metrics["train_steps"] == 6
    assert art.manifest["details"]["best_checkpoint"].endswith("checkpoint-2")
    assert art.metrics["val_f1_macro"] == pytest.approx(art.manifest["details"]["best_metric"])


def test_multi_label(tmp_path):
    from lifecycle.components.classification import _label_set

    assert _label_set("['b', 'a']", "|") == {"a", "b"} and _label_set("a | b", "|") == {"a", "b"}
    data = keyword_data(tmp_path / "multi.jsonl", n=160, multi=True)
    stage = {"kind": "finetune", "model": MODEL, "multi_label": {}, "train": {**TRAIN, "epochs": 8}}
    art = run(raw_pipeline(data, [stage]), tmp_path)["finetune"]
    cfg = json.loads((art.path / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification"
    assert sorted(cfg["id2label"].values()) == sorted(TOPICS)  # atomic labels, not the "a|b" combinations
    assert art.metrics["f1_micro"] > 0.6
    # accuracy is exact-match: recomputed here from the saved model's logits (a label when its logit >= 0,
    # sigmoid 0.5) against the label sets in the file, for the texts of the test split
    from lifecycle import data as datalib

    p = config.build(raw_pipeline(data, [stage]), base_dir=tmp_path)
    test = list(datalib.load(p.data["kw"], p).splits["test"]["text"])
    truth = {r["text"]: set(r["label"].split("|")) for r in map(json.loads, data.read_text().splitlines())}
    names = [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]
    answers = [{names[j] for j in np.flatnonzero(row >= 0)} for row in logits(art.path, test)]
    exact = np.mean([a == truth[t] for a, t in zip(answers, test)])
    assert art.metrics["accuracy"] == pytest.approx(exact), (art.metrics["accuracy"], exact)


def test_gates_fail_the_pipeline_through_the_cli(tmp_path):
    data = keyword_data(tmp_path / "kw.jsonl", n=80)
    stage = {"kind": "finetune", "model": MODEL, "train": {**TRAIN, "epochs": 1, "lr": 1.0e-9},
             "gates": [{"metric": "accuracy", "min": 0.6}],  # an untrained model is at chance (~0.25)
             "collapse_min": None}  # (and predicts one class: test_collapse_gate covers that gate)
    raw = raw_pipeline(data, [stage], name="gated")
    raw["workdir"] = str(tmp_path / "runs")
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 3
    run_dir = tmp_path / "runs" / "gated"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is False and report["stages"][0]["gates"][0]["passed"] is False
    failures = ET.parse(run_dir / "junit.xml").getroot().iter("failure")
    assert any("accuracy" in (f.get("message", "") + (f.text or "")) for f in failures)
    # The same artifact (cached: gates are not in the cache key) passes a bound it meets.
    assert main(["run", str(path), "--set", "stages.finetune.gates.0.min=0.0"]) == 0


def test_crash_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    from transformers import TrainerCallback

    from lifecycle.components import training

    data = keyword_data(tmp_path / "kw.jsonl", n=80)
    stage = {"kind": "finetune", "model": MODEL, "train": {**TRAIN, "max_steps": 12, "eval_steps": 4},
             "collapse_min": None}  # 12 steps: the model may still predict one class; resuming is under test
    straight = run(raw_pipeline(data, [stage]), tmp_path / "straight")["finetune"]

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 10:
                raise KeyboardInterrupt

    original = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda early: [*original(early), Crash()])
    with pytest.raises(KeyboardInterrupt):
        run(raw_pipeline(data, [stage]), tmp_path / "resumed")
    monkeypatch.setattr(training, "callbacks", original)
    said: list[str] = []  # the resume is announced through the run's echo
    outcomes = pipeline.run(config.build(raw_pipeline(data, [stage]), base_dir=tmp_path / "resumed"),
                            workdir=tmp_path / "resumed", echo=said.append)
    resumed = {o.name: o.artifact for o in outcomes}["finetune"]
    assert any("resuming from" in line for line in said), said
    assert "resuming from" not in capsys.readouterr().out
    for key in ("eval_loss", "accuracy", "f1_macro"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-6)
