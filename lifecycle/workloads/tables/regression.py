"""Table regression: the feature-tokenizer transformer (lifecycle.workloads.tables.model) predicting one number per row.

Graph: the table inputs (lifecycle.workloads.tables.task), output `prediction` (batch, 1) in the target's
units (the head predicts the standardised target; the scale fitted on the training split is applied
inside the graph); edge method `regress_rows` ({"value"} per row); route POST /regress. Scores: R2
(the headline), RMSE and MAE in the target's units; fidelity to the fp32 parent: the largest
prediction difference. The finetune stage reports HistGradientBoostingRegressor on the same split; distill
shrinks the model by squared error to the teacher's predictions (lifecycle.workloads.tables.distillation).
"""

from __future__ import annotations

from lifecycle.evaluation.tables import TABLE_REGRESSION
from lifecycle.workloads.tables.task import TableTask


class TabularRegression(TableTask):
    name = "tabular-regression"
    inputs_kind, answers_kind = "rows", "value"
    export_reads = ("regressor",)
    export_hint = "export writes a regressor's predictions: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-regressor"
    output = "prediction"
    edge_method = "regress_rows"
    route = "/regress"
    scores = TABLE_REGRESSION
    fidelity = ("prediction_max_abs_diff",)
    finetunes_into = "regressor"

    def head(self, data) -> dict:
        import numpy as np

        y = data.target("train").astype(np.float64)
        return {"num_labels": 1, "target_scale": [float(y.mean()), float(y.std()) or 1.0]}

    def evaluate(self, outputs, targets) -> dict:
        from lifecycle.evaluation.tables import regression_scores

        return regression_scores(outputs, targets)

    def baseline(self, data, seed: int) -> dict:
        from lifecycle.evaluation.tables import gradient_boosting_regression

        return gradient_boosting_regression(data, seed)

    def width(self, model) -> int:
        return 1

    def targets(self, split):
        import numpy as np

        return np.asarray(self.target_values(split), dtype=np.float64)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.components.onnx import max_abs_diff

        outputs = predictor.logits(self.inputs(rows))
        metrics = self.evaluate(outputs, self.targets(rows))
        if reference is not None:
            metrics["prediction_max_abs_diff"] = max_abs_diff(outputs, reference)
        return metrics, outputs

    def answer_scores(self, answers, rows, predictor) -> dict:
        return self.evaluate([a["value"] if a else float("nan") for a in answers], self.targets(rows))

    def answers_agree(self, http, local, tolerance):
        diff = abs(float(http["value"]) - float(local["value"]))
        return diff <= tolerance, diff


TASK = TabularRegression()
