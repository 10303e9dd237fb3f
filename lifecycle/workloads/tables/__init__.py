"""The tables wing: classification, regression and anomaly scoring of table rows with a feature-tokenizer
transformer (its preprocessing in preprocessing.json beside the graph), pre-trained by masked features or
SCARF, fine-tuned against gradient boosting, distilled into fewer layers."""

from __future__ import annotations

from lifecycle.components.classification import COLLAPSE_METRICS
from lifecycle.components.training import TRAINING_METRICS
from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.evaluation.latency import LATENCY_SETTINGS, TORCH_LATENCY
from lifecycle.tasks.base import own_distill_problem, own_recipe_problem
from lifecycle.workloads import Recipe
from lifecycle.workloads.tables import anomaly, classification, regression
from lifecycle.workloads.tables.evaluation import MASKED_FEATURE_METRICS, SCARF_METRICS, TABLE_REGRESSION

TASKS = (classification.TASK, regression.TASK, anomaly.TASK)

NO_CLASSES = "collapse_min: a regression has no classes to collapse onto; set `collapse_min: null`"


def finetune_metrics(scores: tuple[str, ...]) -> frozenset[str]:
    return frozenset({*scores, *(f"val_{m}" for m in scores), *(f"baseline_gbdt_{m}" for m in scores),
                      *(f"control_{m}" for m in scores), "pretraining_gain", *TRAINING_METRICS, *TORCH_LATENCY, *LATENCY_SETTINGS,
                      *COLLAPSE_METRICS})


def distill_metrics(scores: tuple[str, ...]) -> frozenset[str]:
    return frozenset({*scores, *(f"val_{m}" for m in scores), *(f"teacher_{m}" for m in (*scores, *TORCH_LATENCY)),
                      "retention", "speedup", "compression", "teacher_params_total", "teacher_size_mb",
                      *TRAINING_METRICS, *TORCH_LATENCY, *LATENCY_SETTINGS, *COLLAPSE_METRICS})


def refuses(task: str, regression: bool, stage: str):
    def problem(cfg, sources) -> str | None:
        if regression and cfg.collapse_min is not None:  # the stage adds a collapse gate unless told not to
            return NO_CLASSES
        if stage == "distill":
            return own_distill_problem(cfg, task)
        return own_recipe_problem(cfg, task, "gradient-boosting", "a table model", lora=True)
    return problem


FINETUNE = "lifecycle.workloads.tables.model:finetune"
DISTILL = "lifecycle.workloads.tables.distillation:distill"
RECIPES = (
    Recipe("pretrain", "rows", "masked-feature", "lifecycle.workloads.tables.masked_features:pretrain",
           frozenset({*MASKED_FEATURE_METRICS, "data_wait_fraction"}), "masked-feature modelling: reconstruct masked cells; a linear probe"),
    Recipe("pretrain", "rows", "contrastive", "lifecycle.workloads.tables.contrastive:pretrain",
           frozenset({*SCARF_METRICS, "data_wait_fraction"}), "SCARF: rows against their corrupted copies (InfoNCE); a linear probe"),
    Recipe("finetune", "rows", "labels", FINETUNE, finetune_metrics(CLASS_SCORES),
           "a table classifier, full or LoRA; control and gradient-boosting baseline",
           refuses=refuses("tabular-classification", False, "finetune")),
    Recipe("finetune", "rows", "value", FINETUNE, finetune_metrics(TABLE_REGRESSION),
           "a table regressor (standardised target), full or LoRA; control and gradient-boosting baseline",
           refuses=refuses("tabular-regression", True, "finetune")),
    Recipe("distill", "rows", "labels", DISTILL, distill_metrics(CLASS_SCORES),
           "fewer layers on the teacher's soft targets plus the labels", refuses=refuses("tabular-classification",
                                                                                         False, "distill")),
    Recipe("distill", "rows", "value", DISTILL, distill_metrics(TABLE_REGRESSION),
           "fewer layers on the teacher's predictions (squared error)", refuses=refuses("tabular-regression", True,
                                                                                        "distill")),
)
