"""The generic kinds: text inputs (a tokenizer between the text and the graph; prompts build on it), and
the labels and vector answers that text, tables and images share."""

from __future__ import annotations

from pathlib import Path

from lifecycle.tasks.base import Answers, Inputs


# ------------------------------------------------------------------------------------ text inputs
def text_read(split) -> list:
    return split["text"]


def tokenizer(src: Path, task):
    from lifecycle import models

    return models.load_tokenizer(src, task.max_length)


def _export_text(declared, model, preprocessor, path: Path, opset: int) -> None:
    from lifecycle.components import onnx

    onnx.export_torch(model, preprocessor, path, opset, output=declared.answers.output)


def _text_runtime_files(declared, out: Path, src: Path, preprocessor, task, input_names, model) -> None:
    from lifecycle.components import onnx

    onnx.write_runtime_files(out, src, preprocessor, task.max_length, input_names, declared.graph_schema(model),
                             declared.labels(model))


TEXT = Inputs(kind="text", reads="text", request_key="texts", read=text_read, preprocessor=tokenizer,
              export_graph=_export_text, write_runtime_files=_text_runtime_files, sample=lambda x: {"text": x},
              graph_fusions=True)


# ------------------------------------------------------------------------------------ labels
def config_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def labels_agree(http: dict, local: dict, tolerance: float) -> tuple[bool, float]:
    """Two classifier answers ({"label", "scores"}) agree: every class score within `tolerance`, and the same
    label unless the in-process top two scores are within `tolerance` of each other (a tie that rounding may
    break either way). Returns (agree, largest score difference)."""
    diff = max(abs(http["scores"].get(name, float("inf")) - p) for name, p in local["scores"].items())
    top = sorted(local["scores"].values(), reverse=True)
    margin = top[0] - top[1] if len(top) > 1 else float("inf")
    return not (diff > tolerance or (http["label"] != local["label"] and margin > tolerance)), diff


def class_targets(predictor, labels: list):
    """Class ids of a split's labels by the model's labels (-1: a class the model does not know)."""
    import numpy as np

    index = {name: i for i, name in enumerate(predictor.labels)}
    return np.array([index.get(v, -1) for v in labels], dtype=np.int64)


def class_evaluate(outputs, targets) -> dict:
    """A classifier's scores of its logits against class ids: accuracy, macro-F1, AUROC."""
    from lifecycle.evaluation.classes import classification_scores

    return classification_scores(outputs, targets)


def class_test_metrics(outputs, targets) -> dict:
    """What a classifier's own recipes report on test: its scores and the collapse metrics."""
    from lifecycle.components.classification import collapse_metrics

    return {**class_evaluate(outputs, targets), **collapse_metrics(outputs, targets, outputs.shape[1])}


def split_labels(split) -> list:
    """The labels of a split that holds them as `labels` (tables, images, audio)."""
    return split.labels


def class_scores(evaluate, labels_of, inputs: Inputs):
    """A classifier's `score` (tables, images): `evaluate(logits, targets)` on the split's labels
    (`labels_of(split)`), and argmax agreement and the largest logit difference to the reference."""

    def score(predictor, scoring):
        from lifecycle.components.onnx import argmax_agreeing, max_abs_diff

        rows = scoring.rows
        logits = predictor.logits(inputs(rows))
        metrics = evaluate(logits, class_targets(predictor, labels_of(rows)))
        if scoring.reference is not None:
            metrics.update(argmax_agreement=argmax_agreeing(logits, scoring.reference) / len(logits),
                           logit_max_abs_diff=max_abs_diff(logits, scoring.reference))
        return metrics, logits

    return score


def class_answer_scores(evaluate, labels_of):
    """The served scores of a classifier's answers ({"scores"} per input) on the test split, by `evaluate`."""

    def served(answers, predictor, scoring) -> dict:
        import numpy as np

        scores = np.array([[a["scores"][n] for n in predictor.labels] if a else [0.0] * len(predictor.labels)
                           for a in answers])
        return evaluate(np.log(np.clip(scores, 1e-12, 1)), class_targets(predictor, labels_of(scoring.rows)))

    return served


LABELS = Answers(kind="labels", output="logits", width=lambda model: len(model.config.id2label), agree=labels_agree,
                 labels=config_labels, argmax_parity=True,
                 details=lambda predictor, outputs: {"test_predictions": [int(i) for i in outputs.argmax(-1)]})


# ------------------------------------------------------------------------------------ vector
def vectors_agree(http, local, tolerance: float) -> tuple[bool, float]:
    """An HTTP embedding agrees with the in-process one number by number."""
    import numpy as np

    diff = float(np.abs(np.asarray(http, dtype=np.float64) - np.asarray(local, dtype=np.float64)).max())
    return diff <= tolerance, diff


# one pooled vector per input, the pooling recorded in schema.json and the manifest
VECTOR = Answers(kind="vector", output="embeddings", width=lambda model: model.config.hidden_size, agree=vectors_agree,
                 schema=lambda model: {"pooling": model.pooling.model_dump()},
                 details=lambda predictor, outputs: {"pooling": predictor.schema.get("pooling")},
                 fidelity_at_export=True)
