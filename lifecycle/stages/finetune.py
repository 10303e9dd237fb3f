"""finetune: train the task's model on its labelled data, full or LoRA (peft).

The settings every finetune recipe reads; the recipe is the task's (lifecycle.workloads: text
classification, tables, images, generation). LoRA is merged into the base weights before the artifact is
written, so every later stage sees a plain model. The checkpoint kept is the best one on the validation
`metric` where the recipe selects (text classification), and early stopping watches the same metric.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lifecycle import workloads
from lifecycle.components.classification import MultiLabel, ValMetric, collapse_gate
from lifecycle.components.training import EarlyStopping, TrainConfig
from lifecycle.evaluation.latency import TorchLatency
from lifecycle.models import ModelSource
from lifecycle.schema import HF_HOLDS, Holds, StageBase, Strict, TaskType, Trains


class LoRA(Strict):
    """LoRA adapters (peft) for `finetune`; merged into the base weights before the artifact is written."""

    r: int = Field(8, gt=0)  # rank: higher fits more, costs more trainable parameters
    alpha: int = Field(16, gt=0)  # scale = alpha / r
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: peft's default for the architecture (query, value)


class Control(Strict):
    """A from-scratch control: the same architecture and tokenizer, randomly initialised, trained on the
    same data and seed. It is fully fine-tuned even when the stage uses LoRA (adapters on frozen random
    weights would learn next to nothing and flatter the pre-trained model)."""

    train: TrainConfig | None = None  # None: the stage's own budget and hyperparameters


class Config(StageBase):
    """The `finetune` stage: the task's model trained on its labelled data, full or LoRA (`lc.Finetune`)."""

    kind: Literal["finetune"] = "finetune"  # YAML must name it; in Python the class does
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    model: ModelSource | None = None  # start from here instead of the parent stage's artifact
    train: TrainConfig = TrainConfig()
    lora: LoRA | None = None  # None: full fine-tuning
    multi_label: MultiLabel | None = None  # None: one label per example (softmax + cross-entropy)
    # "balanced": weight_c = n / (k * count_c), as sklearn; or {label: weight}. Helps minority-class F1
    # on skewed data (ChemProt: 40% INHIBITOR) at some cost in accuracy.
    class_weights: Literal["balanced"] | dict[str, Annotated[float, Field(gt=0)]] | None = None
    metric: ValMetric = "f1_micro"  # validation metric that picks the kept checkpoint and drives early stopping
    early_stopping: EarlyStopping | None = None
    # Validation examples scored at each evaluation (a seeded random subset); None: all. Evaluations
    # recur every eval_steps, so on a CPU this bounds their cost. The test split is always scored whole.
    validation_limit: int | None = Field(None, gt=0)
    latency: TorchLatency = TorchLatency()
    control: Control | None = None  # also train from random init: control_<metric> and pretraining_gain
    baseline: bool = False  # TF-IDF + logistic regression on the same split, for context: baseline_tfidf_*
    # What the classification head reads. auto: the pooling the encoder declares (a sentence-transformers
    # folder's 1_Pooling, or pooling.json), else the architecture's own ([CLS] for BERT). mean: the masked
    # token mean through the pooler's dense + tanh (lifecycle.embedding.apply_head_pooling); cls: [CLS].
    head_pooling: Literal["auto", "cls", "mean"] = "auto"
    # Default gate on minority_prediction_ratio (see collapse_metrics): a model that predicts (almost)
    # only one class while the labels are not that skewed fails the stage. None: no default gate;
    # collapse_on_fail "warn": reported in every report, junit and `lifecycle gate` without stopping.
    collapse_min: float | None = Field(0.2, ge=0, le=1)
    collapse_on_fail: Literal["stop", "warn"] = "stop"

    def needs_parent(self) -> bool:
        return self.model is None

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, lora=self.lora, adapters=True)

    def served(self) -> tuple[str, ...]:
        return workloads.trained_tasks(self.kind)

    def recipe_key(self, task: TaskType | None, sources: dict, consumed: Holds | None) -> tuple[str, str]:
        declared = workloads.task(task)
        return declared.inputs_kind, declared.answers_kind

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return HF_HOLDS  # a new head on any encoder or decoder; a classifier is fine-tuned again

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return workloads.task(task).finetunes_into

    def task_hint(self, task: TaskType) -> str | None:
        return f"{task} models are trained by {workloads.task(task).trained_by}"

    def model_post_init(self, _ctx) -> None:
        if self.multi_label is None:  # a label set per example has no majority class to collapse onto
            self.gates = collapse_gate(self.gates, self.collapse_min, self.collapse_on_fail)


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    return ctx.recipe(cfg, parent)
