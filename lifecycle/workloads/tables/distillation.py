"""The distill stage for a table model (the task plug-in's recipe; lifecycle.workloads.tables.task): the
student is the teacher's TableTransformer with fewer encoder layers, initialised from teacher layers
spread over the depth (lifecycle.components.distillation.pick_layers, as for text). A classifier's student
learns the teacher's soft targets at temperature T plus the labels (the same loss as text distillation);
a regressor's, the teacher's predictions plus the targets, both by squared error in the standardised
units the head predicts (`alpha` weighs the teacher, as for classes; there is no temperature to soften a
number). Teacher outputs are computed once over the training rows. `speedup` is teacher / student PyTorch p50 latency on
one row, measured in alternating rounds."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer

from lifecycle.workloads.tables.model import Rows, TableTransformer, predict, tensors


class SoftRows(Rows):
    def __init__(self, feeds: dict, target, teacher_logits):
        super().__init__(feeds, target)
        self.teacher = torch.as_tensor(teacher_logits)

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "teacher_logits": self.teacher[i]}


class DistillationTrainer(Trainer):
    def __init__(self, *args, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from lifecycle.components.distillation import distillation_loss

        teacher, labels = inputs.pop("teacher_logits"), inputs.pop("labels")
        outputs = model(**inputs)
        if model.config.num_labels == 1:  # a regressor: outputs are in the target's units
            mean, std = model.config.target_scale
            student = (outputs.logits.squeeze(-1) - mean) / std
            to_teacher = torch.nn.functional.mse_loss(student, (teacher.squeeze(-1) - mean) / std)
            loss = self.alpha * to_teacher + (1 - self.alpha) * torch.nn.functional.mse_loss(student, (labels.float() - mean) / std)
        else:
            loss = distillation_loss(outputs.logits, teacher, labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss


def distill(cfg, parent, ctx) -> tuple[dict, dict]:
    import json
    import time

    from lifecycle.components.classification import seed_everything
    from lifecycle.components.distillation import (
        init_from_teacher,
        student_config,
        student_costs,
        student_layers,
    )
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args
    from lifecycle.edge import PREPROCESSING

    task = ctx.task

    src = Path(parent.path)
    data = ctx.task_data().read_through(json.loads((src / PREPROCESSING).read_text()), src)
    teacher = TableTransformer.from_pretrained(src).eval()
    layers = student_layers(cfg.student, teacher.config.num_hidden_layers)
    config = student_config(teacher.config, layers, cfg.student.overrides)
    seed_everything(ctx.seed)
    student = TableTransformer(config)
    copied = init_from_teacher(student, teacher, layers)
    details = {"student_layers": layers, "copied_from_teacher": copied}

    train = data.features("train")[0]
    rows = SoftRows(train, data.target("train"), predict(teacher, train))
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no",
                         remove_unused_columns=False)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=rows, temperature=cfg.temperature,
                                  alpha=cfg.alpha)
    started = time.time()
    measured = run_trainer(trainer, ctx.scratch_dir / "checkpoints", ctx)
    train_seconds = time.time() - started
    details["log_history"] = measured.log_history
    student = student.eval()
    student.save_pretrained(ctx.out_dir, safe_serialization=True)
    (ctx.out_dir / PREPROCESSING).write_text(json.dumps(data.preprocessing, indent=2))

    test, val = data.features("test")[0], data.features("validation")[0]
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **task.train.test_metrics(predict(student, test), data.target("test")),
               **{f"val_{k}": v for k, v in task.train.evaluate(predict(student, val), data.target("validation")).items()}}
    teacher_scores = task.train.evaluate(predict(teacher, test), data.target("test"))
    headline = task.scores[0]
    metrics.update({f"teacher_{k}": v for k, v in teacher_scores.items()},
                   retention=metrics[headline] / teacher_scores[headline] if teacher_scores[headline] else float("nan"),
                   **student_costs(teacher, student, {k: v[:1] for k, v in tensors(test).items()}, cfg, ctx.out_dir,
                                   train_seconds))
    return metrics, details
