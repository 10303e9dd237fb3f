"""Labelled sources: deterministic stratified splits, label subsets, and corpora that never see test texts."""

from conftest import TESTS

from lifecycle import data
from lifecycle.config import build
from lifecycle.data.corpus import load_corpus

NEWS = str(TESTS / "data" / "news_tiny.jsonl")


def pipeline(**sources):
    return build({"name": "d", "data": {"news": {"format": "jsonl", "path": NEWS}, **sources}, "task": {"data": "news"},
                  "stages": [{"kind": "finetune", "model": {"preset": "bert-tiny"}}]})


def test_split_is_stratified_and_repeatable():
    p = pipeline()
    a, b = data.load(p.data["news"], p), data.load(p.data["news"], p)
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sizes["test"] == 30 and sum(sizes.values()) == 300 and 29 <= sizes["validation"] <= 31
    assert a.splits["test"]["text"] == b.splits["test"]["text"]
    assert sorted(a.splits["test"]["label"]).count(0) == 6  # 60 per class x 10%


def test_label_subset_is_taken_after_the_split():
    p = pipeline(sub={"format": "jsonl", "path": NEWS, "labels": ["business", "tech"]})
    full, sub = data.load(p.data["news"], p), data.load(p.data["sub"], p)
    assert sub.labels == ["business", "tech"]
    for split in ("train", "validation", "test"):  # every subset text sits in the same split of the full source
        assert set(sub.splits[split]["text"]) <= set(full.splits[split]["text"])


def test_a_labelled_source_used_as_corpus_never_gives_test_texts():
    p = pipeline()
    corpus = load_corpus(p.data["news"], p, seed=0)
    test = set(data.load(p.data["news"], p).splits["test"]["text"])
    assert not test & (set(corpus.splits["train"]["text"]) | set(corpus.splits["validation"]["text"]))
    assert corpus.stats["train_documents"] > 200
