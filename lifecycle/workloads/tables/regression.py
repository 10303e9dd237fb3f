"""Table regression: the feature-tokenizer transformer (lifecycle.workloads.tables.model) predicting one number per row.

Graph: the table inputs (lifecycle.workloads.tables.task), output `prediction` (batch, 1) in the target's
units (the head predicts the standardised target; the scale fitted on the training split is applied
inside the graph); edge method `regress_rows` ({"value"} per row); route POST /regress. Scores: R2
(the headline), RMSE and MAE in the target's units; fidelity to the fp32 parent: the largest
prediction difference. The finetune stage reports HistGradientBoostingRegressor on the same split; distill
shrinks the model by squared error to the teacher's predictions (lifecycle.workloads.tables.distillation).
"""

from __future__ import annotations

from lifecycle.tasks import Artifacts, Edge, Task, Training
from lifecycle.workloads.tables import task as table
from lifecycle.workloads.tables.evaluation import TABLE_REGRESSION


def head(data) -> dict:
    import numpy as np

    y = data.target("train").astype(np.float64)
    return {"num_labels": 1, "target_scale": [float(y.mean()), float(y.std()) or 1.0]}


def evaluate(outputs, targets) -> dict:
    from lifecycle.workloads.tables.evaluation import regression_scores

    return regression_scores(outputs, targets)


def baseline(data, seed: int) -> dict:
    from lifecycle.workloads.tables.evaluation import gradient_boosting_regression

    return gradient_boosting_regression(data, seed)


def targets(split):
    import numpy as np

    return np.asarray(table.target_values(split), dtype=np.float64)


def score(predictor, scoring):
    from lifecycle.components.onnx import max_abs_diff

    outputs = predictor.logits(table.ROWS(scoring.rows))
    metrics = evaluate(outputs, targets(scoring.rows))
    if scoring.reference is not None:
        metrics["prediction_max_abs_diff"] = max_abs_diff(outputs, scoring.reference)
    return metrics, outputs


def served_scores(answers, predictor, scoring) -> dict:
    return evaluate([a["value"] if a else float("nan") for a in answers], targets(scoring.rows))


TASK = Task(
    name="tabular-regression", inputs=table.ROWS, answers=table.VALUE, scores=TABLE_REGRESSION,
    fidelity=("prediction_max_abs_diff",),
    artifacts=Artifacts(("regressor",), "onnx-regressor", finetunes_into="regressor", export_hint=(
        "export writes a regressor's predictions: fine-tune the model first (a finetune stage between them)")),
    edge=Edge("regress_rows", "/regress"), torch_model=table.torch_model, reference=table.reference, score=score,
    served_scores=served_scores, train=Training(evaluate, evaluate, head, baseline))
