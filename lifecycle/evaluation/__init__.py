"""Task metrics through `evaluate`, with the metric modules shipped inside this package.

`evaluate.load("accuracy")` looks on the hub and fails offline, so the modules are loaded by local
path. Importing `evaluate` costs several seconds: it happens inside the functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lifecycle import LifecycleError

METRICS_DIR = Path(__file__).parent / "metrics"
CLASSIFICATION = ("accuracy", "f1_macro", "f1_micro")
TEST_PREDICTIONS = "predictions/test.jsonl"  # in every classification artifact: what release gates pair up


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


def multilabel_metrics(predicted, references) -> dict[str, float]:
    """Exact-set accuracy, macro-F1 (mean of per-label binary F1) and micro-F1 of multi-hot rows."""
    import numpy as np

    pred, ref = np.asarray(predicted).astype(int), np.asarray(references).astype(int)
    rows: dict[tuple, int] = {}  # each distinct label set gets an id, so accuracy = exact-set match
    ids = [[rows.setdefault(tuple(r), len(rows)) for r in m] for m in (pred, ref)]
    f1 = metric("f1")
    per_label = [f1.compute(predictions=pred[:, j], references=ref[:, j], average="binary")["f1"]
                 for j in range(ref.shape[1])]
    return {"accuracy": metric("accuracy").compute(predictions=ids[0], references=ids[1])["accuracy"],
            "f1_macro": float(np.mean(per_label)),
            "f1_micro": f1.compute(predictions=pred.ravel(), references=ref.ravel(), average="binary")["f1"]}


def predicted_labels(logits, threshold: float | None = None):
    """Class ids (argmax) of logits; with a threshold, multi-hot rows (sigmoid(logit) >= threshold)."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    if threshold is None:
        return logits.argmax(-1)
    return (1 / (1 + np.exp(-logits)) >= threshold).astype(int)


def scores(predicted, references) -> dict[str, float]:
    """Metrics of class ids, or of multi-hot rows (2-D)."""
    import numpy as np

    if np.asarray(predicted).ndim > 1:
        return multilabel_metrics(predicted, references)
    return classification_metrics(predicted, references)


def score_test(logits, references, texts: list[str], out_dir: Path, threshold: float | None = None) -> dict[str, float]:
    """The test-split score of a classification artifact, shared by every stage that writes one: the
    metrics, and the per-example predictions in `out_dir/predictions/test.jsonl` (an example id, the
    reference and the prediction per line), so that a later model can be compared with this one on the
    same examples (lifecycle.release). `threshold`: multi-label (multi-hot rows)."""
    predicted = predicted_labels(logits, threshold)
    write_predictions(Path(out_dir) / TEST_PREDICTIONS, texts, predicted, references)
    return scores(predicted, references)


def example_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_predictions(path: Path, texts: list[str], predicted, references) -> None:
    import numpy as np

    pred, ref = np.asarray(predicted), np.asarray(references)
    pred, ref = pred.tolist(), (ref.astype(int) if ref.ndim > 1 else ref).tolist()  # multi-hot targets are floats
    if not len(texts) == len(pred) == len(ref):
        raise ValueError(f"{len(texts)} texts, {len(pred)} predictions, {len(ref)} references")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for text, p, r in zip(texts, pred, ref):
            f.write(json.dumps({"id": example_id(text), "label": r, "pred": p}) + "\n")


@dataclass
class Predictions:
    """Per-example test predictions, in example-id order (so two files pair up row by row)."""

    ids: list[str]
    labels: list
    preds: list

    @classmethod
    def load(cls, path: Path) -> Predictions:
        if not path.is_file():
            raise LifecycleError(f"{path.parent.parent}: no per-example test predictions ({TEST_PREDICTIONS}); "
                                 "re-run the stage with this version of lifecycle to write them")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: (r["id"], json.dumps(r["label"])))  # duplicates: a stable, label-aware order
        return cls([r["id"] for r in rows], [r["label"] for r in rows], [r["pred"] for r in rows])

    @property
    def fingerprint(self) -> str:
        """Identifies the test examples and their labels, whatever the model predicted."""
        from lifecycle.artifact import stable_hash

        return stable_hash([self.ids, self.labels])
