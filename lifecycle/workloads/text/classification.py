"""Text classification: a sequence classifier's logits, one label per text.

Graph: `logits` (batch, labels), float32; edge method `predict` (label, score, scores per text);
route POST /classify. Scores: accuracy and F1 (lifecycle.evaluation); fidelity to the fp32 parent:
argmax agreement and the largest logit difference. The per-example test predictions go into the
artifact, where a release gate pairs them with the last release's.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation import CLASSIFICATION
from lifecycle.tasks import LABELS, TEXT, Artifacts, Edge, Task


def torch_model(src: Path):
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models

    return models.load_model(AutoModelForSequenceClassification, src).eval()


def reference(model, tokenizer, texts, task, batch_size=64):
    from lifecycle.components.inference import predict_logits

    return predict_logits(model, tokenizer, texts, task.max_length, batch_size)


def score(predictor, scoring):
    from lifecycle.components.onnx import argmax_agreeing, max_abs_diff
    from lifecycle.evaluation import classification_metrics, score_test

    rows, reference = scoring.rows, scoring.reference
    logits = predictor.logits(rows["text"])
    if scoring.out_dir is not None:
        metrics = score_test(logits, rows["label"], rows["text"], scoring.out_dir)
    else:
        metrics = classification_metrics(logits.argmax(-1), rows["label"])
    if reference is not None:
        metrics.update(argmax_agreement=argmax_agreeing(logits, reference) / len(logits),  # non-finite rows disagree
                       logit_max_abs_diff=max_abs_diff(logits, reference))  # NaN for a NaN model: its gates fail
    return metrics, logits


def served_scores(answers, predictor, scoring) -> dict:
    from lifecycle.evaluation import classification_metrics

    predicted = [predictor.labels.index(a["label"]) if a else -1 for a in answers]
    return classification_metrics(predicted, scoring.rows["label"])


TASK = Task(
    name="classification", inputs=TEXT, answers=LABELS, scores=CLASSIFICATION,
    fidelity=("argmax_agreement", "logit_max_abs_diff"),
    artifacts=Artifacts(("classifier",), "onnx-classifier", optimum_task="text-classification", export_hint=(
        "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)")),
    edge=Edge("predict", "/classify"), torch_model=torch_model, reference=reference, score=score,
    served_scores=served_scores)
