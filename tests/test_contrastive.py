"""Contrastive objective and the embedding task: the loss, the metrics, and real runs on a tiny encoder
(pretrain from scratch with SimCSE -> export with pooling in the graph -> int8), supervised pairs with
hard negatives through adapt, and config errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from lifecycle import ConfigError
from lifecycle import pipeline as runner
from lifecycle.config import build
from lifecycle.edge import BundleError, Predictor

NEWS = Path(__file__).parent / "data" / "news_tiny.jsonl"
TRAIN = {"max_steps": 8, "batch_size": 16, "lr": 1e-3, "logging_steps": 2, "save_steps": 4}
MODEL = {"preset": "bert-tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64}, "tokenizer": {"vocab_size": 400}}
FAST = {"runs": 3, "warmup": 1, "batch32": False}
pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)


def write_pairs(tmp_path: Path) -> dict[str, str]:
    """From the news texts: scored pairs (1 = same topic, 0 = not) and triplets (anchor, same-topic
    positive, other-topic hard negative)."""
    rows = [json.loads(line) for line in NEWS.read_text().splitlines()]
    rng = random.Random(0)
    scored, triplets = [], []
    for _ in range(60):
        a, b = rng.sample(rows, 2)
        scored.append({"text1": a["text"], "text2": b["text"], "score": float(a["label"] == b["label"])})
        same = [r for r in rows if r["label"] == a["label"] and r is not a]
        other = [r for r in rows if r["label"] != a["label"]]
        triplets.append({"anchor": a["text"], "positive": rng.choice(same)["text"], "negative": rng.choice(other)["text"]})
    for name, items in (("scored", scored), ("triplets", triplets)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return {"scored": str(tmp_path / "scored.jsonl"), "triplets": str(tmp_path / "triplets.jsonl")}


def embedding_pipeline(tmp_path: Path, stages: list[dict], pairs: dict | None = None) -> dict:
    task = {"type": "embedding", "data": "news", "max_length": 32, "embedding": {"k": 3}}
    if pairs:
        task["embedding"]["pairs"] = {"path": pairs["scored"], "score_field": "score"}
    return {"name": "emb-tiny", "seed": 0, "task": task, "stages": stages,
            "data": {"news": {"format": "jsonl", "path": str(NEWS), "split": {"validation": 0.2, "test": 0.2}}}}


def run(tmp_path, raw):
    p = build(raw, base_dir=tmp_path)
    return {o.name: o for o in runner.run(p, workdir=tmp_path / "runs", echo=lambda *a: None)}


SIMCSE = {"kind": "pretrain", "data": "news", "objective": "contrastive", "model": MODEL, "block_size": 32,
          "contrastive": {"temperature": 0.1, "max_length": 32, "eval_texts": 32}, "train": TRAIN}


# ---------------------------------------------------------------------------------------------- units
def test_info_nce_prefers_matching_pairs_and_scales_with_temperature():
    import torch

    from lifecycle.embedding import info_nce

    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    matched = info_nce(a, a, 0.05)
    shuffled = info_nce(a, a.roll(1, 0), 0.05)
    assert matched < 0.1 < shuffled
    # uniform similarities: exactly log(batch), whatever the temperature
    assert info_nce(torch.ones(8, 4), torch.ones(8, 4), 0.1).item() == pytest.approx(np.log(8), abs=1e-5)


def test_alignment_uniformity_knn_spearman_fidelity():
    from lifecycle.embedding import alignment_uniformity, fidelity, knn_accuracy, spearman

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8))
    assert alignment_uniformity(x, x)["alignment"] == pytest.approx(0.0)
    assert alignment_uniformity(x, x + rng.normal(size=x.shape))["alignment"] > 0.1
    clustered = np.repeat(np.eye(8)[:2], 32, 0) + 0.01 * rng.normal(size=(64, 8))
    assert alignment_uniformity(clustered, clustered)["uniformity"] > alignment_uniformity(x, x)["uniformity"]
    labels = [0] * 32 + [1] * 32
    assert knn_accuracy(clustered[::2], labels[::2], clustered[1::2], labels[1::2], k=3) == 1.0
    assert spearman(x[:10], x[:10] * 2, np.arange(10)) != spearman(x[:10], x[10:20], np.arange(10))
    f = fidelity(x, x * 3)
    assert f["embedding_cosine_min"] == pytest.approx(1.0) and f["embedding_cosine_mean"] == pytest.approx(1.0)


def test_pooling_is_read_from_a_sentence_transformers_folder(tmp_path):
    from lifecycle.embedding import Pooling, read_pooling, write_pooling

    assert read_pooling(tmp_path) == Pooling()
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    assert read_pooling(tmp_path) == Pooling(mode="cls", normalize=False)
    write_pooling(tmp_path, Pooling(mode="mean"))
    assert read_pooling(tmp_path) == Pooling(mode="mean", normalize=True)  # pooling.json wins


# ------------------------------------------------------------------------------------------ real runs
def test_simcse_pretrain_export_quantize_embeddings(tmp_path):
    """Unsupervised SimCSE from scratch; the ONNX graph pools and normalises; int8 keeps the
    embeddings close to fp32; gates work on the embedding metrics; the edge runtime embeds."""
    pairs = write_pairs(tmp_path)
    stages = [SIMCSE,
              {"kind": "export", "latency": FAST, "gates": [{"metric": "embedding_cosine_min", "min": 0.9999}]},
              {"kind": "quantize", "latency": FAST, "min_speedup": None,
               "gates": [{"metric": "embedding_cosine_mean", "min": 0.9},
                         {"metric": "knn_accuracy", "max_drop": 0.2, "vs": "export"}]}]
    out = run(tmp_path, embedding_pipeline(tmp_path, stages, pairs))
    assert all(o.status == "passed" for o in out.values()), {n: o.gates for n, o in out.items()}

    pre = out["pretrain"].artifact
    m = pre.metrics
    assert m["negatives_per_example"] == 15 and m["temperature"] == 0.1 and m["train_steps"] == 8
    for key in ("alignment", "uniformity", "alignment_before", "uniformity_before", "knn_accuracy",
                "knn_accuracy_before", "spearman", "spearman_before", "eval_loss", "train_loss"):
        assert np.isfinite(m[key]), key
    assert m["knn_accuracy_gain"] == pytest.approx(m["knn_accuracy"] - m["knn_accuracy_before"])
    assert m["knn_test_texts"] == 60 and m["uniformity"] < 0
    # it learns: the contrastive loss falls over its 8 steps, and the embedding spreads out (uniformity, lower
    # is better) beyond the untrained encoder's, measured on the same held-out texts
    losses = [r["loss"] for r in pre.manifest["details"]["log_history"] if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert m["uniformity"] < m["uniformity_before"], (m["uniformity"], m["uniformity_before"])
    assert {"model.safetensors", "pooling.json", "tokenizer.json"} <= set(pre.manifest["files"])
    assert json.loads((pre.path / "pooling.json").read_text()) == {"mode": "mean", "normalize": True}

    export = out["export"].artifact
    assert export.metrics["parity_max_abs_diff"] < 1e-4 and "accuracy" not in export.metrics
    assert json.loads((export.path / "schema.json").read_text())["task"] == "embedding"
    p = Predictor.open(export.path)
    emb = p.embed(["the striker scored twice", "shares fell"])
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)  # normalised in-graph
    assert p.check() == 8
    with pytest.raises(BundleError, match=r"answers embed\(\), not predict\(\)"):
        p.predict(["a"])

    q = out["quantize"].artifact
    assert q.manifest["details"]["method"] == "dynamic-int8"
    assert q.metrics["size_mb"] < export.metrics["size_mb"]
    assert 0.9 < q.metrics["embedding_cosine_min"] <= q.metrics["embedding_cosine_mean"] <= 1.0 + 1e-6
    assert Predictor.open(q.path).check() == 8
    from lifecycle.bundle import write_bundle  # the edge bundle carries and re-checks sample embeddings

    bundle = Predictor.open(write_bundle(tmp_path / "runs" / "emb-tiny", tmp_path / "model.zip"))
    assert bundle.task == "embedding" and bundle.check() == 8


def test_supervised_pairs_with_hard_negatives_through_adapt(tmp_path):
    pairs = write_pairs(tmp_path)
    adapt = {"kind": "adapt", "data": "news", "objective": "contrastive", "train": {**TRAIN, "max_steps": 4},
             "contrastive": {"mode": "supervised", "max_length": 32, "eval_texts": 16, "pooling": {"mode": "cls"},
                             "pairs": {"path": pairs["triplets"], "text1_field": "anchor", "text2_field": "positive",
                                       "negative_field": "negative"}},
             "gates": [{"metric": "knn_accuracy", "min": 0.0}]}
    pre = {**SIMCSE, "train": {**TRAIN, "max_steps": 2}}
    out = run(tmp_path, embedding_pipeline(tmp_path, [pre, adapt]))
    m = out["adapt"].artifact.metrics
    assert out["adapt"].status == "passed"
    assert m["negatives_per_example"] == 31 and m["train_texts"] == 57  # 60 pairs, 5% held out
    assert json.loads((out["adapt"].artifact.path / "pooling.json").read_text())["mode"] == "cls"
    assert out["adapt"].artifact.manifest["details"]["mode"] == "supervised"


def test_contrastive_config_errors(tmp_path):
    def stage(**fields):
        return embedding_pipeline(tmp_path, [{**SIMCSE, **fields}])

    with pytest.raises(ConfigError, match="does not fit preset"):
        build(stage(model={"preset": "gpt-tiny"}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="`objective: contrastive` only"):
        build(stage(objective=None), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="supervised mode trains on `pairs`"):
        build(stage(contrastive={"mode": "supervised"}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot produce 'perplexity'"):
        build(stage(gates=[{"metric": "perplexity", "max": 10}]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="embedding: settings for `type: embedding` only"):
        build({**stage(), "task": {"data": "news", "embedding": {"k": 3}}}, base_dir=tmp_path)
    p = build(stage(gates=[{"metric": "knn_accuracy", "min": 0.5}]), base_dir=tmp_path)
    assert p.stages[0].objective == "contrastive"


def test_unset_new_fields_keep_old_cache_keys():
    """objective / contrastive / task.embedding stay out of dumps while unset: existing runs stay cached."""
    raw = embedding_pipeline(Path("."), [{"kind": "pretrain", "data": "news", "model": MODEL}])
    raw["task"] = {"data": "news"}
    p = build(raw)
    assert "objective" not in p.stages[0].model_dump() and "contrastive" not in p.stages[0].model_dump()
    assert "embedding" not in p.task.model_dump(mode="json")
