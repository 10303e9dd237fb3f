"""Table anomaly detection: how badly a masked-feature model (pretrain with `objective: masked-feature`)
reconstructs a row's features from each other (lifecycle.masked_features.AnomalyScorer).

Graph: the table inputs (lifecycle.tasks.table_task), output `anomaly_score` (batch, 1), higher is more
anomalous, the whole score computed inside the graph; edge method `score_rows` ({"anomaly_score"} per
row); route POST /score. Export reads the pretrain stage's masked-feature model directly (no finetune:
the model never sees a label). Scores: AUROC and average precision against the labelled anomalies, which
are the rows of the target's rarest class in the training split (malignant tumours in breast cancer, say).
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation.tables import TABLE_ANOMALY
from lifecycle.tasks.table_task import TableTask


class TabularAnomaly(TableTask):
    name = "tabular-anomaly"
    export_reads = ("masked-lm",)
    export_hint = "an anomaly scorer is a masked-feature model: pretrain with `objective: masked-feature` before export"
    trained_by = "pretrain with `objective: masked-feature`"
    onnx_holds = "onnx-anomaly-scorer"
    output = "anomaly_score"
    edge_method = "score_rows"
    route = "/score"
    scores = TABLE_ANOMALY
    fidelity = ("anomaly_score_max_abs_diff",)
    own_training = False  # trained by pretrain (masked-feature); finetune and distill do not apply

    def torch_model(self, src: Path):
        from lifecycle.masked_features import AnomalyScorer, MaskedFeatureModel

        return AnomalyScorer(MaskedFeatureModel.from_pretrained(src)).eval()

    def width(self, model) -> int:
        return 1

    def anomalous(self, pipeline) -> str:
        """The target value that marks an anomaly: the rarest class of the task's training split."""
        from lifecycle import data

        train = data.load(pipeline.data[pipeline.task.data], pipeline).splits["train"]
        return str(train[train.columns[-1]].value_counts().idxmin())

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        import numpy as np

        from lifecycle.components.onnx import max_abs_diff
        from lifecycle.evaluation.tables import anomaly_scores

        outputs = predictor.logits(self.inputs(rows))
        is_anomaly = np.array([str(v) == self.anomalous(pipeline) for v in self.target_values(rows)])
        metrics = anomaly_scores(outputs, is_anomaly)
        if reference is not None:
            metrics["anomaly_score_max_abs_diff"] = max_abs_diff(outputs, reference)
        return metrics, outputs

    def answers_agree(self, http, local, tolerance):
        diff = abs(float(http["anomaly_score"]) - float(local["anomaly_score"]))
        return diff <= tolerance, diff


TASK = TabularAnomaly()
