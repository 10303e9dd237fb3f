"""What a model answers: each task's inputs and answers kinds (KINDS, for a schema.json that does not name
them), the answer of each answers kind from the graph's outputs (ANSWERS), and where two recorded answers differ."""

from __future__ import annotations

import numpy as np

# schema.json's task -> (inputs kind, answers kind), for models whose schema.json does not name its kinds
# ("inputs_kind", "answers_kind"): every task whose models were written before it did. The inputs kind decides
# what turns raw inputs into feeds and how they are batched (lifecycle.edge.kinds.INPUTS); the answers kind,
# what one answer is (ANSWERS). schema.json's "method" names the pair for callers.
KINDS = {
    "classification": ("text", "labels"),
    "embedding": ("text", "vector"),
    "generation": ("prompts", "tokens"),
    "tabular-classification": ("rows", "labels"),
    "tabular-regression": ("rows", "value"),
    "tabular-anomaly": ("rows", "score"),
    "image-classification": ("images", "labels"),
    "image-embedding": ("images", "vector"),
    "audio-classification": ("audio", "labels"),
}


def _label_scores(logits: np.ndarray, labels: list[str]) -> list[dict]:
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    out = []
    for row in probs:
        best = int(row.argmax())
        out.append({"label": labels[best], "score": float(row[best]),
                    "scores": {name: float(p) for name, p in zip(labels, row)}})
    return out


# answers kind -> the answers from the graph's outputs (one row per input) and labels.json; a package outside
# lifecycle adds its own through an entry point (lifecycle.edge.kinds).
ANSWERS = {
    "labels": _label_scores,  # {"label", "score", "scores"}: the softmax of a classifier's logits
    "vector": lambda outputs, labels: outputs,  # embeddings (n, dim) float32, pooled and normalised in the graph
    "value": lambda outputs, labels: [{"value": float(v)} for v in outputs.reshape(-1)],
    "score": lambda outputs, labels: [{"anomaly_score": float(v)} for v in outputs.reshape(-1)],
    "tokens": None,  # a generator's answers are decoded step by step instead (Predictor.generate)
}


def difference(want, got, atol: float, path: str = "answer") -> str | None:
    """Where two JSON answers differ (strings exactly, numbers by more than atol), or None."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return f"{path}: expected keys {sorted(want)}, got {sorted(got)}"
        return next((d for k in want if (d := difference(want[k], got[k], atol, f"{path}.{k}"))), None)
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: expected {len(want)} values, got {len(got)}"
        return next((d for i, (w, g) in enumerate(zip(want, got)) if (d := difference(w, g, atol, f"{path}[{i}]"))),
                    None)
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (want, got))
    if numbers and abs(want - got) <= atol or not numbers and want == got:
        return None
    return f"{path}: expected {want!r}, got {got!r}"
