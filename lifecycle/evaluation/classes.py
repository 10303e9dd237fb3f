"""Scores of a classifier's logits that the table and image workloads share: accuracy, macro-F1 and AUROC."""

from __future__ import annotations

CLASS_SCORES = ("accuracy", "f1_macro", "auroc")


def classification_scores(logits, targets) -> dict[str, float]:
    """accuracy, macro-F1 and AUROC (one-vs-rest macro for more than two classes) of class logits."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    k = probs.shape[1]
    try:
        auroc = (roc_auc_score(targets, probs[:, 1]) if k == 2
                 else roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    except ValueError:  # one class present in the split: AUROC is undefined
        auroc = float("nan")
    predicted = probs.argmax(-1)
    return {"accuracy": float(accuracy_score(targets, predicted)),
            "f1_macro": float(f1_score(targets, predicted, average="macro", labels=list(range(k)), zero_division=0)),
            "auroc": float(auroc)}
