"""Text classification: a sequence classifier's logits, one label per text.

Graph: `logits` (batch, labels), float32; edge method `predict` (label, score, scores per text);
route POST /classify. Scores: accuracy and F1 (lifecycle.evaluation); fidelity to the fp32 parent:
argmax agreement and the largest logit difference. The per-example test predictions go into the
artifact, where a release gate pairs them with the last release's.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation import CLASSIFICATION
from lifecycle.tasks.base import TaskPlugin, labels_agree


class Classification(TaskPlugin):
    name = "classification"
    inputs_kind, answers_kind = "text", "labels"
    export_reads = ("classifier",)
    export_hint = "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-classifier"
    output = "logits"
    edge_method = "predict"
    route = "/classify"
    scores = CLASSIFICATION
    fidelity = ("argmax_agreement", "logit_max_abs_diff")
    argmax_parity = True
    optimum_task = "text-classification"

    def torch_model(self, src: Path):
        from transformers import AutoModelForSequenceClassification

        from lifecycle import models

        return models.load_model(AutoModelForSequenceClassification, src).eval()

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.components.inference import predict_logits

        return predict_logits(model, tokenizer, texts, max_length, batch_size)

    def width(self, model) -> int:
        return len(model.config.id2label)

    def labels(self, model) -> list[str]:
        id2label = model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.components.onnx import argmax_agreeing, max_abs_diff
        from lifecycle.evaluation import classification_metrics, score_test

        logits = predictor.logits(rows["text"])
        if out_dir is not None:
            metrics = score_test(logits, rows["label"], rows["text"], out_dir)
        else:
            metrics = classification_metrics(logits.argmax(-1), rows["label"])
        if reference is not None:
            metrics.update(argmax_agreement=argmax_agreeing(logits, reference) / len(logits),  # non-finite rows disagree
                           logit_max_abs_diff=max_abs_diff(logits, reference))  # NaN for a NaN model: its gates fail
        return metrics, logits

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                **super().prediction_details(predictor, rows, outputs)}

    def answer_scores(self, answers, rows, predictor) -> dict:
        from lifecycle.evaluation import classification_metrics

        predicted = [predictor.labels.index(a["label"]) if a else -1 for a in answers]
        return classification_metrics(predicted, rows["label"])

    def answers_agree(self, http, local, tolerance):
        return labels_agree(http, local, tolerance)


TASK = Classification()
