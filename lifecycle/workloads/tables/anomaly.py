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

from lifecycle.tasks import Artifacts, Edge, Task
from lifecycle.workloads.tables import task as table
from lifecycle.workloads.tables.evaluation import TABLE_ANOMALY


def torch_model(src: Path):
    from lifecycle.workloads.tables.masked_features import AnomalyScorer, MaskedFeatureModel

    return AnomalyScorer(MaskedFeatureModel.from_pretrained(src)).eval()


def anomalous(train) -> str:
    """The target value that marks an anomaly: the rarest class of the task's training split."""
    return str(train[train.columns[-1]].value_counts().idxmin())


def is_anomaly(rows, marker: str):
    import numpy as np

    return np.array([str(v) == marker for v in table.target_values(rows)])


def compare(model, preprocessor, ctx) -> dict:
    """On test, beside the model: the same scorer untrained (control_: what pre-training learnt;
    pretraining_gain in AUROC), IsolationForest and supervised trees (lifecycle.workloads.tables.evaluation)."""
    import torch

    from lifecycle.workloads.tables.evaluation import anomaly_baselines, anomaly_scores
    from lifecycle.workloads.tables.masked_features import AnomalyScorer

    data = ctx.task_data()
    marker = anomalous(data.splits["train"])
    flags = {split: is_anomaly(data.splits[split], marker) for split in ("train", "test")}
    torch.manual_seed(ctx.seed)
    untrained = AnomalyScorer(type(model.model)(model.config)).eval()
    test = table.ROWS(data.splits["test"])
    trained, control = (anomaly_scores(table.reference(m, preprocessor, test),
                                       flags["test"]) for m in (model, untrained))
    metrics = {f"control_{k}": v for k, v in control.items()}
    metrics["pretraining_gain"] = trained["auroc"] - control["auroc"]
    metrics.update(anomaly_baselines(data, flags, ctx.seed))
    return metrics


def score(predictor, scoring):
    """AUROC and average precision against the anomalies the loaded training split marks (nothing is read again)."""
    from lifecycle.components.onnx import max_abs_diff
    from lifecycle.workloads.tables.evaluation import anomaly_scores

    rows = scoring.rows
    outputs = predictor.logits(table.ROWS(rows))
    metrics = anomaly_scores(outputs, is_anomaly(rows, anomalous(scoring.data.splits["train"])))
    if scoring.reference is not None:
        metrics["anomaly_score_max_abs_diff"] = max_abs_diff(outputs, scoring.reference)
    return metrics, outputs


TASK = Task(
    name="tabular-anomaly", inputs=table.ROWS, answers=table.SCORE, scores=TABLE_ANOMALY,
    fidelity=("anomaly_score_max_abs_diff",),
    artifacts=Artifacts(("masked-lm",), "onnx-anomaly-scorer", trained_by="pretrain with `objective: masked-feature`",
                        export_hint=("an anomaly scorer is a masked-feature model: pretrain with "
                                     "`objective: masked-feature` before export")),
    edge=Edge("score_rows", "/score"), torch_model=torch_model, reference=table.reference, score=score,
    compare=compare, comparisons=(*(f"{who}_{m}" for who in ("control", "baseline_iforest", "baseline_gbdt")
                                    for m in TABLE_ANOMALY), "pretraining_gain"))
