"""Task metrics through `evaluate`, with the metric modules shipped inside this package.

`evaluate.load("accuracy")` looks on the hub and fails offline, so the modules are loaded by local
path. Importing `evaluate` costs several seconds: it happens inside the functions.
"""

from __future__ import annotations

import functools
from pathlib import Path

METRICS_DIR = Path(__file__).parent / "metrics"
CLASSIFICATION = ("accuracy", "f1_macro", "f1_micro")


@functools.cache
def metric(name: str):
    import evaluate

    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"))


def classification_metrics(predictions, references) -> dict[str, float]:
    """accuracy, macro-F1 and micro-F1 (fractions 0..1) of int class predictions."""
    preds, refs = [int(p) for p in predictions], [int(r) for r in references]
    f1 = metric("f1")
    return {
        "accuracy": metric("accuracy").compute(predictions=preds, references=refs)["accuracy"],
        "f1_macro": f1.compute(predictions=preds, references=refs, average="macro")["f1"],
        "f1_micro": f1.compute(predictions=preds, references=refs, average="micro")["f1"],
    }
