"""distill: knowledge distillation of the parent classifier (the teacher) into a smaller student.

The student is, by default, the teacher with half its layers, initialised DistilBERT-style from
teacher layers spread evenly over the depth, first and last included (12 -> 6 keeps 0,2,4,7,9,11,
the choice of DistilBERT's own extraction script). It can instead be narrower (config overrides;
tensors whose shape changed start from random) or any model from `student.model`.

Loss = alpha * KL(p_teacher || p_student at temperature T) * T^2 + (1 - alpha) * cross-entropy on the
labels (+ hidden_weight * a cosine loss between student layers and the teacher layers they came from).
The T^2 keeps the soft-target gradients on the scale of the hard ones (Hinton et al., 2015). Teacher
logits are computed once over the training split and cached, unless the hidden-state loss needs the
teacher's activations at every step.

`retention` = student metric / teacher metric and `speedup` = teacher p50 latency / student p50,
both measured here, on the same test split and with the same latency settings, alternating teacher and
student rounds so that load from other processes hits both alike.

A decoder (`task: {type: generation}`) is distilled token by token by its task's recipe
(lifecycle.workloads.decoders.distillation): the same student and loss at every target position, scored by perplexity.
An image embedder's student matches the teacher's embeddings of augmented views by cosine, beside the
contrastive loss of its finetune (lifecycle.workloads.images.embedder), scored by kNN accuracy.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lifecycle import workloads
from lifecycle.components.classification import ValMetric, collapse_gate
from lifecycle.components.training import EarlyStopping, TrainConfig
from lifecycle.evaluation.latency import TorchLatency
from lifecycle.models import ModelSource
from lifecycle.schema import Holds, StageBase, Strict, TaskType, Trains


class Student(Strict):
    """The student of `distill`: the teacher with fewer layers (and optional config overrides), or another model."""

    layers: list[Annotated[int, Field(ge=0)]] | None = None  # teacher layers to keep, in order; None: `num_layers` evenly spaced
    num_layers: int | None = Field(None, gt=0, description="None: half the teacher's layers (rounded up)")
    overrides: dict = {}  # other config fields, e.g. {hidden_size: 256}: reshaped tensors start from random
    model: ModelSource | None = None  # use this model instead of shrinking the teacher (its own tokenizer is fine)


class Config(StageBase):
    """The `distill` stage: the parent classifier (teacher) distilled into a smaller student (`lc.Distill`)."""

    kind: Literal["distill"] = "distill"  # YAML must name it; in Python the class does
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    student: Student = Student()
    temperature: float = Field(2.0, gt=0)  # softens both distributions; 2-4 passes the teacher's "dark knowledge"
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the soft-target loss; 1 - alpha goes to the labels
    hidden_weight: float = Field(0.0, ge=0)  # > 0 runs the teacher every step (no logit cache)
    cache_teacher_logits: bool = True  # one teacher pass over train instead of one per step
    train: TrainConfig = TrainConfig()
    metric: ValMetric = "accuracy"  # picks the kept checkpoint and defines `retention`
    early_stopping: EarlyStopping | None = None
    validation_limit: int | None = Field(None, gt=0)  # as in finetune: validation examples per evaluation
    latency: TorchLatency = TorchLatency()
    latency_rounds: int = Field(3, gt=0)  # alternating teacher/student rounds; the median round counts
    collapse_min: float | None = Field(0.2, ge=0, le=1)  # as in finetune: default gate on minority_prediction_ratio
    collapse_on_fail: Literal["stop", "warn"] = "stop"

    def trains(self) -> Trains:
        return Trains(self.train, student=self.student)

    def served(self) -> tuple[str, ...]:
        return workloads.trained_tasks(self.kind)

    def recipe_key(self, task: TaskType | None, sources: dict, consumed: Holds | None) -> tuple[str, str]:
        declared = workloads.task(task)
        return declared.inputs_kind, declared.answers_kind

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        # the teacher: what the task's finetune stage holds (a classifier's logits are the soft targets,
        # a regressor's predictions the targets of its student)
        return (workloads.task(task).finetunes_into if task else "classifier",)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return workloads.task(task).finetunes_into if task else "classifier"

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        return f"distill's teacher is a fine-tuned {self.accepts(task)[0]}: put a finetune stage before it"

    def task_hint(self, task: TaskType) -> str | None:
        return "distillation matches a classifier's logits; a text embedding model is not distilled here"

    def model_post_init(self, _ctx) -> None:
        self.gates = collapse_gate(self.gates, self.collapse_min, self.collapse_on_fail)


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    return ctx.recipe(cfg, parent)
