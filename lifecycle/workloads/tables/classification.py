"""Table classification: a feature-tokenizer transformer (lifecycle.workloads.tables.model) on the rows of a table source
(lifecycle.data.tables), one class per row.

Graph: inputs `numeric`, `numeric_missing`, `categorical` (lifecycle.edge.TablePreprocessing makes them
from raw rows, with the vocabularies and normalisation fitted on the training split: preprocessing.json
beside the graph), output `logits` (batch, classes); edge method `predict_rows`; route POST /predict.
Scores: accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for text classifiers. The finetune stage
trains it with `train_table` (the from-scratch model is built from the data's schema and a size preset).
"""

from __future__ import annotations

from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.base import ClassAnswers
from lifecycle.workloads.tables.task import TableTask


class TabularClassification(ClassAnswers, TableTask):
    name = "tabular-classification"
    inputs_kind, answers_kind = "rows", "labels"
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

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                **super().prediction_details(predictor, rows, outputs)}

    def split_labels(self, split) -> list:  # scores, targets and served answers: ClassAnswers
        return self.target_values(split)


TASK = TabularClassification()
