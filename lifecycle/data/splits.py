"""Splitting array-backed sources (images, audio) and the checks that held-out splits can measure what a task
scores (shared by text, table, image and audio data)."""

from __future__ import annotations

from lifecycle import LifecycleError


def check_scored_classes(where: str, labels: dict[str, list]) -> None:
    """Every class of the train split has an example in validation (which selects checkpoints) and in
    test (which scores the model). A test split holding one class is scored 1.0 in accuracy and macro-F1
    by a model that always answers it, and a class absent from test is never scored at all. One example
    is the minimum asked: a per-class recall from one example is coarse, but it is a measurement."""
    for split in ("validation", "test"):
        missing = sorted(set(labels["train"]) - set(labels[split]), key=str)
        if missing:
            held = ", ".join(repr(v) for v in sorted(set(labels[split]), key=str))
            raise LifecycleError(f"{where}: the {split} split has no example of class "
                                 f"{', '.join(repr(v) for v in missing)} (it holds {held}); every class of the train "
                                 f"split must be scored: add examples of it or raise `split.{split}`")


def split_off(order, frac: float, seed: int, strat):
    """(rest, held out): a seeded share `frac` of the indices `order` held out, stratified by `strat` (None:
    not) where every class can be, else a plain seeded split."""
    import numpy as np

    if frac <= 0:
        return order, order[:0]
    from sklearn.model_selection import train_test_split

    try:
        a, b = train_test_split(order, test_size=frac, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to stratify: a plain seeded split
        a, b = train_test_split(order, test_size=frac, random_state=seed)
    return np.sort(a), np.sort(b)
