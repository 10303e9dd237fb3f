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
(lifecycle.decoder_distillation): the same student and loss at every target position, scored by perplexity.
An image embedder's student matches the teacher's embeddings of augmented views by cosine, beside the
contrastive loss of its finetune (lifecycle.image_embedding), scored by kNN accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from lifecycle import LifecycleError, tasks
from lifecycle.components.classification import COLLAPSE_METRICS, VAL_METRICS, ValMetric, collapse_gate
from lifecycle.components.distillation import (
    distillation_loss,
    hidden_loss,
    init_from_teacher,
    paired_latency,
    pick_layers,
    student_config,
    student_layers,
    teacher_logits,
)
from lifecycle.components.training import EarlyStopping, TrainConfig
from lifecycle.decoder_distillation import DISTILL_METRICS as DECODER_METRICS
from lifecycle.embedding import IMAGE_EMBEDDING_DISTILL
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import TORCH_LATENCY, TorchLatency
from lifecycle.evaluation.tables import TABLE_CLASSIFICATION, TABLE_REGRESSION
from lifecycle.models import ModelSource
from lifecycle.schema import Holds, StageBase, Strict, TaskType, Trains


class Student(Strict):
    layers: list[Annotated[int, Field(ge=0)]] | None = None  # teacher layers to keep, in order; None: `num_layers` evenly spaced
    num_layers: int | None = Field(None, gt=0, description="None: half the teacher's layers (rounded up)")
    overrides: dict = {}  # other config fields, e.g. {hidden_size: 256}: reshaped tensors start from random
    model: ModelSource | None = None  # use this model instead of shrinking the teacher (its own tokenizer is fine)


class Config(StageBase):
    kind: Literal["distill"]
    tasks = ("classification", "tabular-classification", "tabular-regression", "image-classification", "image-embedding",
             "generation")
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

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        # the teacher: what the task's finetune stage holds (a classifier's logits are the soft targets,
        # a regressor's predictions the targets of its student)
        return (tasks.get(task).finetunes_into if task else "classifier",)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return tasks.get(task).finetunes_into if task else "classifier"

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        return f"distill's teacher is a fine-tuned {self.accepts(task)[0]}: put a finetune stage before it"

    def task_hint(self, task: TaskType) -> str | None:
        return "distillation matches a classifier's logits; a text embedding model is not distilled here"

    def task_problem(self, task: TaskType) -> str | None:
        return tasks.get(task).distill_problem(self)

    def metric_names(self) -> set[str]:
        scores = {*CLASSIFICATION, *TABLE_CLASSIFICATION, *TABLE_REGRESSION}  # a table task's recipe adds its own
        teacher = {f"teacher_{m}" for m in (*scores, *TORCH_LATENCY, "params_total", "size_mb")}
        return {*scores, *TORCH_LATENCY, *VAL_METRICS, *(f"val_{m}" for m in (*TABLE_CLASSIFICATION, *TABLE_REGRESSION)),
                *teacher, "retention", "speedup", "compression",
                "eval_loss", "params_total", "size_mb", "train_seconds", "train_steps", "data_wait_fraction",
                *COLLAPSE_METRICS, *DECODER_METRICS, *IMAGE_EMBEDDING_DISTILL}

    def model_post_init(self, _ctx) -> None:
        self.gates = collapse_gate(self.gates, self.collapse_min, self.collapse_on_fail)


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    plugin = tasks.get(ctx.pipeline.task.type)
    if plugin.own_training:  # a model that does not read text (a table's): the task's recipe
        return plugin.distill(cfg, parent, ctx)
    return distill_text(cfg, parent, ctx)


def distill_text(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    import time

    from lifecycle import models
    from lifecycle.components import classification as cls
    from lifecycle.components import training
    from lifecycle.components.inference import logits_of
    from lifecycle.evaluation import score_test

    task = ctx.pipeline.task
    data = ctx.task_data()
    loaded = cls.load_classifier(Path(parent.path), ctx, data, _teacher_labels(parent, data))
    teacher, t_tok = loaded.model, loaded.tokenizer
    details = {} if loaded.head_pooling is None else {"head_pooling": loaded.head_pooling}
    labels = cls.label_space(data, None)
    student, s_tok, layer_map, built = build_student(cfg.student, teacher, t_tok, ctx, data, labels)
    details.update(built, student_layers=layer_map, student_num_layers=student.config.num_hidden_layers,
                   student_hidden_size=student.config.hidden_size)

    splits = cls.encode(data, s_tok, task.max_length, labels, cfg.validation_limit, ctx.seed)
    online = cfg.hidden_weight > 0 or not cfg.cache_teacher_logits
    if online and s_tok.get_vocab() != t_tok.get_vocab():
        raise LifecycleError("distill: running the teacher online (hidden_weight > 0 or cache_teacher_logits: false) "
                             "needs the student to share the teacher's tokenizer")
    train_set = splits["train"]
    if not online:
        logits = teacher_logits(teacher, t_tok, data.splits["train"]["text"], task.max_length, ctx.scratch_dir)
        train_set = train_set.add_column("teacher_logits", logits.tolist())
    if cfg.hidden_weight > 0 and student.config.hidden_size != teacher.config.hidden_size:
        raise LifecycleError("distill: hidden_weight > 0 needs student and teacher of the same hidden_size")

    checkpoints = ctx.scratch_dir / "checkpoints"
    trainer = distillation_trainer(
        cfg, teacher if online else None, layer_map, model=student, train_dataset=train_set,
        args=training.best_checkpoint_args(cfg.train, checkpoints, ctx.seed, cfg.metric, remove_unused_columns=False),
        eval_dataset=splits["validation"], data_collator=cls.collator(s_tok),
        compute_metrics=lambda p: cls.score(p.predictions, p.label_ids, labels),
        callbacks=training.callbacks(cfg.early_stopping))
    started = time.time()
    measured = training.train(trainer, checkpoints, ctx)  # resumes after a crash
    train_seconds = time.time() - started
    val = trainer.evaluate()
    details.update(log_history=measured.log_history, best_checkpoint=trainer.state.best_model_checkpoint)
    if not trainer.is_world_process_zero():
        return {}, details  # under torchrun only rank 0's artifact is kept: saving and testing are its job
    student = trainer.model
    models.save(student, s_tok, ctx.out_dir)

    texts, targets = data.splits["test"]["text"], splits["test"]["labels"]
    s_logits = logits_of(student, s_tok, texts, task.max_length)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **score_test(s_logits, targets, texts, ctx.out_dir)}
    metrics.update(cls.collapse_metrics(s_logits, targets, len(labels.names)))
    warning = cls.collapse_warning(metrics, cfg.collapse_min, lr=cfg.train.lr)
    if warning:
        details["collapse_warning"] = warning
        ctx.echo(f"   warning: {warning}")
    teacher_scores = cls.score(logits_of(teacher, t_tok, texts, task.max_length), targets, labels)
    t_lat, s_lat = paired_latency(teacher, t_tok, student, s_tok, texts[0], cfg, task.max_length)
    s_params, t_params = models.count_parameters(student)["params_total"], models.count_parameters(teacher)["params_total"]
    metrics.update(s_lat)
    metrics.update({f"teacher_{k}": v for k, v in teacher_scores.items()})
    metrics.update({f"teacher_{k}": t_lat[k] for k in TORCH_LATENCY})
    reference = teacher_scores[cfg.metric]
    metrics.update(retention=metrics[cfg.metric] / reference if reference else float("nan"),
                   speedup=t_lat["torch_latency_p50_ms"] / s_lat["torch_latency_p50_ms"], compression=t_params / s_params,
                   params_total=s_params, teacher_params_total=t_params,
                   size_mb=models.size_mb(ctx.out_dir / "model.safetensors"),
                   teacher_size_mb=models.size_mb(Path(parent.path) / "model.safetensors"),
                   **{f"val_{m}": val[f"eval_{m}"] for m in CLASSIFICATION}, eval_loss=val["eval_loss"],
                   train_seconds=train_seconds, train_steps=trainer.state.global_step)
    return metrics, details


def _teacher_labels(parent, data):
    """The teacher's own label space (its config), which must be the task's."""
    import json

    from lifecycle.components.classification import LabelSpace

    config = json.loads((Path(parent.path) / "config.json").read_text())
    if config.get("problem_type") == "multi_label_classification":
        raise LifecycleError("distill supports single-label classification; the teacher is multi-label")
    names = [config.get("id2label", {}).get(str(i)) for i in range(len(data.labels))]
    if names != list(data.labels):
        raise LifecycleError(f"distill: the teacher's labels {list(config.get('id2label', {}).values())} are not "
                             f"the task's {list(data.labels)}; distil a teacher fine-tuned on this task")
    return LabelSpace(list(data.labels), list(range(data.num_labels)), multi=False)


# ------------------------------------------------------------------------------------------------ student
def build_student(spec: Student, teacher, t_tok, ctx, data, labels):
    """(student, tokenizer, layer_map, manifest details): layer_map[j] is the teacher layer student layer j
    started from."""
    from transformers import AutoModelForSequenceClassification

    from lifecycle.components.classification import load_classifier
    from lifecycle.embedding import apply_head_pooling

    n_teacher = teacher.config.num_hidden_layers
    if spec.model is not None:
        loaded = load_classifier(spec.model, ctx, data, labels)
        student, tok = loaded.model, loaded.tokenizer
        return student, tok, pick_layers(n_teacher, min(student.config.num_hidden_layers, n_teacher)), loaded.details()
    layers = student_layers(spec, n_teacher)
    config = student_config(teacher.config, layers, spec.overrides)
    student = apply_head_pooling(AutoModelForSequenceClassification.from_config(config))  # the teacher's head pooling
    copied = init_from_teacher(student, teacher, layers)
    return student, t_tok, layers, {"initialised_from_teacher": copied}


# --------------------------------------------------------------------------------------------- training
def distillation_trainer(cfg: Config, teacher, layer_map: list[int], **kwargs):
    """A Trainer with the distillation loss. `teacher` is None when the logits come cached in the batch.
    In evaluation the loss is plain cross-entropy, so eval_loss compares across students and runs."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    from lifecycle.components.training import length_grouped_sampler

    class DistillationTrainer(Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.model_accepts_loss_kwargs = False  # a plain mean loss: the Trainer divides it by grad_accum
            if teacher is not None:
                self.teacher = teacher.to(self.args.device).eval()

        def _get_train_sampler(self, train_dataset=None):
            return length_grouped_sampler(self.args, train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            cached = inputs.pop("teacher_logits", None)
            hidden = cfg.hidden_weight > 0 and model.training
            outputs = model(**inputs, output_hidden_states=hidden)
            if not model.training:
                loss = F.cross_entropy(outputs.logits, labels)
                return (loss, outputs) if return_outputs else loss
            t_out = None
            if cached is None:
                with torch.no_grad():
                    t_out = self.teacher(**inputs, output_hidden_states=hidden)
                cached = t_out.logits
            loss = distillation_loss(outputs.logits, cached, labels, cfg.temperature, cfg.alpha)
            if hidden:
                loss = loss + cfg.hidden_weight * hidden_loss(outputs.hidden_states, t_out.hidden_states, layer_map,
                                                              inputs["attention_mask"])
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer(**kwargs)
