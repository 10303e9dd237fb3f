"""Table classification: a feature-tokenizer transformer (lifecycle.workloads.tables.model) on the rows of a table source
(lifecycle.data.tables), one class per row.

Graph: inputs `numeric`, `numeric_missing`, `categorical` (lifecycle.edge.TablePreprocessing makes them
from raw rows, with the vocabularies and normalisation fitted on the training split: preprocessing.json
beside the graph), output `logits` (batch, classes); edge method `predict_rows`; route POST /predict.
Scores: accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for text classifiers. The finetune stage
trains it with `train_table` (the from-scratch model is built from the data's schema and a size preset).
"""

from __future__ import annotations

from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.tasks import LABELS, Artifacts, Edge, Task, Training
from lifecycle.tasks.kinds import class_answer_scores, class_evaluate, class_scores, class_test_metrics
from lifecycle.workloads.tables import task as table


def head(data) -> dict:
    id2label = dict(enumerate(data.labels))
    return {"num_labels": len(data.labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}






def baseline(data, seed: int) -> dict:
    from lifecycle.workloads.tables.evaluation import gradient_boosting

    return gradient_boosting(data, seed)


TASK = Task(
    name="tabular-classification", inputs=table.ROWS, answers=LABELS, scores=CLASS_SCORES,
    fidelity=("argmax_agreement", "logit_max_abs_diff"),
    artifacts=Artifacts(("classifier",), "onnx-classifier", export_hint=(
        "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)")),
    edge=Edge("predict_rows", "/predict"), torch_model=table.torch_model, reference=table.reference,
    score=class_scores(class_evaluate, table.target_values, table.ROWS),
    served_scores=class_answer_scores(class_evaluate, table.target_values),
    train=Training(class_evaluate, class_test_metrics, head, baseline))
