"""Table anomaly detection: how badly a masked-feature model (pretrain with `objective: masked-feature`)
reconstructs a row's features from each other (lifecycle.workloads.tables.masked_features.AnomalyScorer).

Graph: the table inputs (lifecycle.workloads.tables.task), output `anomaly_score` (batch, 1), higher is more
anomalous, the whole score computed inside the graph; edge method `score_rows` ({"anomaly_score"} per
row); route POST /score. Export reads the pretrain stage's masked-feature model directly (no finetune:
the model never sees a label). Scores: AUROC and average precision against the labelled anomalies, which
are the rows of the target's rarest class in the training split (malignant tumours in breast cancer, say).
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation.tables import TABLE_ANOMALY
from lifecycle.workloads.tables.task import TableTask


class TabularAnomaly(TableTask):
    name = "tabular-anomaly"
    inputs_kind, answers_kind = "rows", "score"
    export_reads = ("masked-lm",)
    export_hint = "an anomaly scorer is a masked-feature model: pretrain with `objective: masked-feature` before export"
    trained_by = "pretrain with `objective: masked-feature`"
    onnx_holds = "onnx-anomaly-scorer"
    output = "anomaly_score"
    edge_method = "score_rows"
    route = "/score"
    scores = TABLE_ANOMALY
    fidelity = ("anomaly_score_max_abs_diff",)
    comparisons = (*(f"{who}_{m}" for who in ("control", "baseline_iforest", "baseline_gbdt") for m in TABLE_ANOMALY),
                   "pretraining_gain")

    def torch_model(self, src: Path):
        from lifecycle.workloads.tables.masked_features import AnomalyScorer, MaskedFeatureModel

        return AnomalyScorer(MaskedFeatureModel.from_pretrained(src)).eval()

    def width(self, model) -> int:
        return 1

    @staticmethod
    def anomalous(train) -> str:
        """The target value that marks an anomaly: the rarest class of the task's training split."""
        return str(train[train.columns[-1]].value_counts().idxmin())

    def is_anomaly(self, rows, anomalous: str):
        import numpy as np

        return np.array([str(v) == anomalous for v in self.target_values(rows)])

    def compare(self, model, preprocessor, ctx) -> dict:
        """On test, beside the model: the same scorer untrained (control_: what pre-training learnt;
        pretraining_gain in AUROC), IsolationForest and supervised trees (lifecycle.evaluation.tables)."""
        import torch

        from lifecycle.evaluation.tables import anomaly_baselines, anomaly_scores
        from lifecycle.workloads.tables.masked_features import AnomalyScorer

        table = ctx.task_data()
        anomalous = self.anomalous(table.splits["train"])
        is_anomaly = {split: self.is_anomaly(table.splits[split], anomalous) for split in ("train", "test")}
        torch.manual_seed(ctx.seed)
        untrained = AnomalyScorer(type(model.model)(model.config)).eval()
        test = self.inputs(table.splits["test"])
        trained, control = (anomaly_scores(self.reference(m, preprocessor, test, ctx.pipeline.task.max_length),
                                           is_anomaly["test"]) for m in (model, untrained))
        metrics = {f"control_{k}": v for k, v in control.items()}
        metrics["pretraining_gain"] = trained["auroc"] - control["auroc"]
        metrics.update(anomaly_baselines(table, is_anomaly, ctx.seed))
        return metrics

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle import data
        from lifecycle.components.onnx import max_abs_diff
        from lifecycle.evaluation.tables import anomaly_scores

        train = data.load(pipeline.data[pipeline.task.data], pipeline).splits["train"]
        outputs = predictor.logits(self.inputs(rows))
        metrics = anomaly_scores(outputs, self.is_anomaly(rows, self.anomalous(train)))
        if reference is not None:
            metrics["anomaly_score_max_abs_diff"] = max_abs_diff(outputs, reference)
        return metrics, outputs

    def answers_agree(self, http, local, tolerance):
        diff = abs(float(http["anomaly_score"]) - float(local["anomaly_score"]))
        return diff <= tolerance, diff


TASK = TabularAnomaly()
