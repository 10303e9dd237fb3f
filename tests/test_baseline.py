"""The TF-IDF baseline and the linear probe on data whose answer is known: a separable keyword set
(each label owns its own words) must score 1.0 (the probe, on random features: >= 0.95); the same
texts with every label shuffled (a permutation test: labels carry nothing about the words) must score
near chance (4 labels: 0.25). Both splits are shuffled, each on its own: with only the train labels
shuffled, every test row of a label would get the same wrong-or-right answer, so the score would be a
count of 4 coin flips (0.425 was seen), not a rate near 0.25."""

from __future__ import annotations

import random

import pytest

LABELS = ["sport", "food", "tech", "art"]
WORDS = {lab: [f"{lab}{i}" for i in range(6)] for lab in LABELS}  # each label's own vocabulary
FILLER = [f"filler{i}" for i in range(20)]  # shared by every label


def keyword_splits(n_train: int = 200, n_test: int = 200, shuffle: bool = False, seed: int = 0):
    """LabelledData: texts of 3 words of their label among 6 shared fillers."""
    from datasets import Dataset, DatasetDict

    from lifecycle.data import LabelledData

    rng = random.Random(seed)

    def rows(n):
        labels = [i % len(LABELS) for i in range(n)]
        texts = [" ".join(rng.sample(rng.sample(WORDS[LABELS[y]], 3) + rng.sample(FILLER, 6), 9)) for y in labels]
        return texts, labels

    (train_x, train_y), (test_x, test_y) = rows(n_train), rows(n_test)
    if shuffle:  # the texts keep their words, the labels lose their link to them
        rng.shuffle(train_y)
        rng.shuffle(test_y)
    splits = DatasetDict({"train": Dataset.from_dict({"text": train_x, "label": train_y}),
                          "validation": Dataset.from_dict({"text": test_x[:20], "label": test_y[:20]}),
                          "test": Dataset.from_dict({"text": test_x, "label": test_y})})
    return LabelledData(splits, list(LABELS))


CHANCE_CEILING = 0.40  # chance is 0.25; 200 test rows: sd 0.031, so 0.40 is ~5 sd above it


def test_tfidf_baseline_scores_one_on_separable_and_chance_on_shuffled_labels():
    from lifecycle.workloads.text.baseline import tfidf_logreg

    separable = tfidf_logreg(keyword_splits())
    assert set(separable) == {"baseline_tfidf_accuracy", "baseline_tfidf_f1_macro", "baseline_tfidf_f1_micro"}
    assert separable["baseline_tfidf_accuracy"] == 1.0 and separable["baseline_tfidf_f1_macro"] == 1.0
    shuffled = tfidf_logreg(keyword_splits(shuffle=True))
    assert shuffled["baseline_tfidf_accuracy"] < CHANCE_CEILING, shuffled
    assert shuffled["baseline_tfidf_f1_micro"] == pytest.approx(shuffled["baseline_tfidf_accuracy"])


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    """A randomly initialised 2-layer BERT and a word-level tokenizer: random features still keep which
    words a text holds, so a linear probe separates the keyword set; no training is needed."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *(w for lab in LABELS for w in WORDS[lab])]
    path = tmp_path_factory.mktemp("probe") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64))
    return model.train(), tokenizer


def test_probe_scores_one_on_separable_and_chance_on_shuffled_labels(random_encoder):
    from lifecycle.components.probe import Probe, probe_accuracy

    model, tokenizer = random_encoder
    cfg = Probe(data="kw", max_length=16, limit=None)
    assert probe_accuracy(model, tokenizer, keyword_splits(), cfg)["probe_accuracy"] >= 0.95  # measured 0.99
    assert model.training  # the probe puts the model back in the mode it found it in
    shuffled = probe_accuracy(model, tokenizer, keyword_splits(shuffle=True), cfg)["probe_accuracy"]
    assert shuffled < CHANCE_CEILING
