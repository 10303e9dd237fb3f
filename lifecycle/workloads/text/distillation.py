"""The distill recipe for text classification: the student is the teacher with fewer layers (or
`student.model`), trained on the teacher's soft targets at temperature T plus the labels (and, with
`hidden_weight`, a cosine loss on the hidden states of the layers it came from); teacher logits cached
once unless the teacher must run online. Retention and speedup are measured here, teacher and student
timed in alternating rounds (lifecycle.components.distillation)."""

from __future__ import annotations

from pathlib import Path

from lifecycle import LifecycleError
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
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import TORCH_LATENCY


def distill(cfg, parent, ctx) -> tuple[dict, dict]:
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
def build_student(spec, teacher, t_tok, ctx, data, labels):
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
def distillation_trainer(cfg, teacher, layer_map: list[int], **kwargs):
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
