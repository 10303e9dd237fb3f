"""Table classification: a feature-tokenizer transformer (lifecycle.tabular) on the rows of a table source
(lifecycle.data.tables), one class per row.

Graph: inputs `numeric`, `numeric_missing`, `categorical` (lifecycle.edge.TablePreprocessing makes them
from raw rows, with the vocabularies and normalisation fitted on the training split: preprocessing.json
beside the graph), output `logits` (batch, classes); edge method `predict_rows`; route POST /predict.
Scores: accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for text classifiers. The finetune stage
trains it with `train_table` (the from-scratch model is built from the data's schema and a size preset).
"""

from __future__ import annotations

from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.table_task import TableTask


class TabularClassification(TableTask):
    name = "tabular-classification"
    export_reads = ("classifier",)
    export_hint = "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-classifier"
    output = "logits"
    edge_method = "predict_rows"
    route = "/predict"
    scores = TABLE_CLASSIFICATION
    fidelity = ("argmax_agreement", "logit_max_abs_diff")
    argmax_parity = True

    def head(self, data) -> dict:
        id2label = dict(enumerate(data.labels))
        return {"num_labels": len(data.labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}

    def evaluate(self, outputs, targets) -> dict:
        from lifecycle.evaluation.tables import classification_scores

        return classification_scores(outputs, targets)

    def test_metrics(self, outputs, targets) -> dict:
        from lifecycle.components.classification import collapse_metrics

        return {**self.evaluate(outputs, targets), **collapse_metrics(outputs, targets, outputs.shape[1])}

    def baseline(self, data, seed: int) -> dict:
        from lifecycle.evaluation.tables import gradient_boosting

        return gradient_boosting(data, seed)

    def width(self, model) -> int:
        return model.config.num_labels

    def labels(self, model) -> list[str]:
        id2label = model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def targets(self, predictor, split):
        """Class ids of a split's target column by the model's labels (-1: a class the model does not know)."""
        import numpy as np

        index = {name: i for i, name in enumerate(predictor.labels)}
        return np.array([index.get(v, -1) for v in self.target_values(split)], dtype=np.int64)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.components.onnx import argmax_agreeing, max_abs_diff

        logits = predictor.logits(self.inputs(rows))
        metrics = self.evaluate(logits, self.targets(predictor, rows))
        if reference is not None:
            metrics.update(argmax_agreement=argmax_agreeing(logits, reference) / len(logits),
                           logit_max_abs_diff=max_abs_diff(logits, reference))
        return metrics, logits

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                **super().prediction_details(predictor, rows, outputs)}

    def answer_scores(self, answers, rows, predictor) -> dict:
        import numpy as np

        scores = np.array([[a["scores"][n] for n in predictor.labels] if a else [0.0] * len(predictor.labels)
                           for a in answers])
        return self.evaluate(np.log(np.clip(scores, 1e-12, 1)), self.targets(predictor, rows))

    def answers_agree(self, http, local, tolerance):
        from lifecycle.tasks.classification import TASK

        return TASK.answers_agree(http, local, tolerance)  # the same answer shape: label, score, scores


TASK = TabularClassification()
