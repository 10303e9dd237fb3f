"""The toy's pieces of the edge runtime (registered under lifecycle.edge.inputs / lifecycle.edge.answers):
its inputs kind ("vectors": lists of numbers, fed as one float32 matrix) and answers kind ("sign")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Vectors:
    def __init__(self, root: Path, schema: dict):
        self.width = json.loads((Path(root) / schema["preprocessor"]).read_text())["width"]
        self.max_length = 0

    def feeds(self, predictor, items, pad_to=None) -> dict:
        return {"features": np.asarray(items, dtype=np.float32).reshape(len(items), self.width)}

    def outputs(self, predictor, items, batch_size=64) -> np.ndarray:
        """One call per `batch_size` vectors; one vector per call for a graph whose activation scales are
        computed at run time over the whole batch (dynamic int8), so an answer never depends on its batch."""
        items = list(items)
        if not items:
            return np.zeros((0, len(predictor.labels)), dtype=np.float32)
        size = 1 if predictor.batch_dependent else max(1, batch_size)
        outs = [predictor.session.run(None, self.feeds(predictor, items[i : i + size]))[0]
                for i in range(0, len(items), size)]
        return np.concatenate(outs).astype(np.float32)

    def sample(self):
        return [0.0] * self.width

    def recorded(self, entry: dict):
        return entry["text"]

    def check_request(self, payload, max_items: int) -> str | None:
        items = payload.get("vectors") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items or len(items) > max_items:
            return f'expected {{"vectors": [[number, ...], ...]}} with 1 to {max_items} vectors'
        for i, v in enumerate(items):
            if not isinstance(v, list) or len(v) != self.width or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                return f'"vectors"[{i}]: expected {self.width} numbers'
        return None


def sign(outputs: np.ndarray, labels: list[str]) -> list[dict]:
    z = outputs - outputs.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return [{"label": labels[int(row.argmax())], "score": float(row.max())} for row in probs]
