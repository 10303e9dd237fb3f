"""Checks that held-out splits can measure what a task scores (shared by text, table and image data)."""

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
