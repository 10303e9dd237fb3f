"""A small audio spectrogram transformer (transformers' ASTForAudioClassification built from a config) and
the finetune and distill recipes of spoken-word classification (lifecycle.workloads.audio.task).

Why AST from a config: it is a Hugging Face model (config.json + safetensors) that reads exactly what
transformers' ASTFeatureExtractor writes (`input_values`: frames x mel bins), so masked-spectrogram
pre-training (lifecycle.workloads.audio.masked) writes a checkpoint this model loads with a new head, the
Trainer trains it and torch.onnx exports it as it exports the other encoders.

Sizes: a `preset` gives depth and width (bert-tiny: 2 layers, hidden 64); the spectrogram's size comes from
the data's preprocessing (mel bins) and the task's `max_length` (frames per clip: 128 frames are 2.6 s at
8 kHz), the patch side from `model.overrides.patch_size` (default 16) and the stride between patches
from `model.overrides.stride` (default: the patch side, no overlap; AST's 10 of 16 sees 6 times more
patches at 6 times the attention cost).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import ASTConfig, ASTForAudioClassification, Trainer

from lifecycle.edge.audio_inputs import FEATURE_EXTRACTOR


def ast_config(preprocessing: dict, source=None, **head) -> ASTConfig:
    """An ASTConfig for spectrograms as `preprocessing` makes them, sized by a ModelSource preset and its
    overrides (patch_size and stride among them); `head`: num_labels, id2label, label2id."""
    from lifecycle import models

    fields = {**models.PRESETS[source.preset](), **source.overrides} if source is not None else {}
    for key in ("family", "max_position_embeddings", "vocab_size"):
        fields.pop(key, None)
    patch = fields.pop("patch_size", 16)
    stride = fields.pop("stride", patch)
    bins, frames = preprocessing["num_mel_bins"], preprocessing["max_length"]
    if patch > min(bins, frames):
        raise ValueError(f"model.overrides.patch_size: {patch} exceeds the spectrogram ({frames} frames x {bins} mel bins)")
    return ASTConfig(num_mel_bins=bins, max_length=frames, patch_size=patch,
                     frequency_stride=fields.pop("frequency_stride", stride), time_stride=fields.pop("time_stride", stride),
                     **{**fields, **head})


def head(labels: list[str]) -> dict:
    id2label = dict(enumerate(labels))
    return {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def with_frames(data, frames: int):
    """The data with its preprocessing cut or padded to `frames` per clip (the task's max_length); the
    mean and std stay those of the clips' real frames."""
    import dataclasses

    return dataclasses.replace(data, preprocessing={**data.preprocessing, "max_length": frames})


class Clips(torch.utils.data.Dataset):
    """Spectrograms (computed once) and their targets as the Trainer's default collator stacks them."""

    def __init__(self, values, targets=None):
        self.values = torch.as_tensor(values)
        self.targets = None if targets is None else torch.as_tensor(targets)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict:
        item = {"input_values": self.values[i]}
        return item if self.targets is None else {**item, "labels": self.targets[i]}


# ------------------------------------------------------------------------------------ model helpers
@torch.inference_mode()
def predict(model, values, batch_size: int = 256) -> np.ndarray:
    """Logits (float32 numpy) for `input_values` (n, frames, bins) from AudioPreprocessing."""
    model.eval()
    x = torch.as_tensor(values)
    outs = [model(input_values=x[i : i + batch_size]).logits for i in range(0, len(x), batch_size)]
    return torch.cat(outs).float().numpy() if outs else np.zeros((0, model.config.num_labels), dtype=np.float32)


def export_onnx(model, sample, path: Path, opset: int = 17, output: str = "logits") -> None:
    """torch.onnx (TorchScript path, as for the other encoders): input `input_values` with a dynamic batch axis."""
    from lifecycle import quiet

    model.eval()
    with torch.inference_mode(), quiet.onnx_export():
        torch.onnx.export(model, (torch.as_tensor(sample[:2]),), str(path), input_names=["input_values"],
                          output_names=[output], dynamic_axes={"input_values": {0: "batch"}, output: {0: "batch"}},
                          opset_version=opset, dynamo=False)


def latency(model, values) -> dict:
    """PyTorch eager p50/p95/p99 at batch 1 (torch_latency_*) and batch 16 (torch_latency_b16_*)."""
    from lifecycle.evaluation.latency import measure

    x = torch.as_tensor(values)
    one, many = x[:1], x[torch.arange(16) % len(x)]
    with torch.inference_mode():
        found = measure(lambda: model(input_values=one), 3, 20)
        b16 = measure(lambda: model(input_values=many), 2, 10)
    return {**found, **{k.replace("latency_", "latency_b16_"): v for k, v in b16.items()}}


def fit(model, dataset, train, out_dir: Path, seed: int = 0, ctx=None, trainer_class=Trainer, **extra):
    """Train on `dataset` (Clips) with the Trainer; `train` is a TrainConfig. Leaves the model in eval mode;
    returns what training measured for the stage (lifecycle.components.training.train)."""
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args

    args = training_args(train, Path(out_dir), seed, eval_strategy="no", save_strategy="no", remove_unused_columns=False)
    measured = run_trainer(trainer_class(model=model, args=args, train_dataset=dataset, **extra), Path(out_dir), ctx)
    model.eval()
    return measured


def save(model, preprocessing: dict, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    (Path(out) / FEATURE_EXTRACTOR).write_text(json.dumps(preprocessing, indent=2))


def task_data(ctx, start: Path | None):
    """The task's clips at the task's frames, read through the preprocessing saved with the model at
    `start` (a pre-trained one's) when there is one."""
    from lifecycle import LifecycleError

    data = ctx.task_data()
    if start is None:
        return with_frames(data, ctx.pipeline.task.max_length)
    if not (start / FEATURE_EXTRACTOR).is_file():
        raise LifecycleError(f"{start}: not an audio model (no {FEATURE_EXTRACTOR}); start an audio task from a "
                             "`preset` or a masked-spectrogram pretrain stage")
    return data.read_through(json.loads((start / FEATURE_EXTRACTOR).read_text()), start)


def scored(model, data, task, ctx) -> tuple[dict, dict]:
    """(the task's test scores (collapse metrics too) and val_ scores of `model`, details: its test predictions
    and its scores on every source the data names in `audio.also_test` (lifecycle.workloads.audio.evaluation))."""
    from lifecycle.workloads.audio.evaluation import also_test

    test = predict(model, data.features("test"))
    metrics = {**task.train.test_metrics(test, data.target("test")),
               **{f"val_{k}": v for k, v in task.train.evaluate(predict(model, data.features("validation")),
                                                              data.target("validation")).items()}}
    return metrics, {"test_predictions": [int(i) for i in test.argmax(-1)],
                     "also_test": also_test(lambda x: predict(model, x), data, ctx)}


# ---------------------------------------------------------------------------------------- recipes
def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    """The finetune stage for a spoken-word classifier: build (a preset) or load (the parent, or `model.path`)
    with a new head, train (every weight, or LoRA adapters merged back), save with its
    preprocessor_config.json, score on test beside the from-scratch control (when asked) and the MFCC
    baseline (always)."""
    import time

    from lifecycle import models
    from lifecycle.components.adapters import attention_lora, merged
    from lifecycle.components.classification import seed_everything
    from lifecycle.workloads.audio.evaluation import mfcc_baseline

    task = ctx.task
    source = cfg.model
    if source is not None and source.path:
        source = source.model_copy(update={"path": str(ctx.pipeline.resolve(source.path))})
    start = Path(parent.path) if source is None else Path(source.path) if source.path else None
    data = task_data(ctx, start)
    seed_everything(ctx.seed)
    if start is None:
        model = ASTForAudioClassification(ast_config(data.preprocessing, source, **head(data.labels)))
    else:
        config = ASTConfig.from_pretrained(start)
        config.update(head(data.labels))
        model = ASTForAudioClassification.from_pretrained(start, config=config, ignore_mismatched_sizes=True)
    if cfg.lora:
        model = attention_lora(model, cfg.lora, head="classifier")
    counts = models.count_parameters(model)
    train = Clips(data.features("train"), data.target("train"))
    started = time.time()
    measured = fit(model, train, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx)
    train_seconds = time.time() - started
    lora = {}
    if cfg.lora:  # merged into the weights, so export and distill see a plain ASTForAudioClassification
        val = data.features("validation")[:64]
        model, lora = merged(model, ctx.out_dir, lambda m: predict(m, val))
    save(model, data.preprocessing, ctx.out_dir)
    metrics, scores = scored(model, data, task, ctx)
    metrics.update(data_wait_fraction=measured.data_wait_fraction, **counts,
                   trainable_fraction=counts["params_trainable"] / counts["params_total"],
                   size_mb=models.size_mb(ctx.out_dir / "model.safetensors"), train_seconds=train_seconds, **lora,
                   **latency(model, data.features("test")[:16]))
    if cfg.control is not None:  # the same architecture from random init, same data, budget and seed
        seed_everything(ctx.seed)
        scratch = ASTForAudioClassification(model.config)
        fit(scratch, train, cfg.control.train or cfg.train, ctx.scratch_dir / "control", ctx.seed)
        control = task.train.evaluate(predict(scratch, data.features("test")), data.target("test"))
        metrics.update({f"control_{k}": v for k, v in control.items()},
                       pretraining_gain=metrics["accuracy"] - control["accuracy"])
    baseline, baseline_also, baseline_predictions = mfcc_baseline(data, ctx)
    metrics.update(baseline)
    details = {"log_history": measured.log_history, "labels": data.labels, "data_stats": data.stats,
               "spectrogram": {"frames": model.config.max_length, "mel_bins": model.config.num_mel_bins,
                               "patch_size": model.config.patch_size, "stride": model.config.time_stride,
                               "sampling_rate": data.preprocessing["sampling_rate"]},
               "test_predictions": scores["test_predictions"], "baseline_mfcc_test_predictions": baseline_predictions,
               "also_test": {name: {**found, **baseline_also[name]}
                             for name, found in scores["also_test"].items()}}
    return metrics, details


class DistillationTrainer(Trainer):
    """Soft targets from the teacher on the very batch the student sees, plus the labels."""

    def __init__(self, *args, teacher, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher.eval(), temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from lifecycle.components.distillation import distillation_loss

        labels = inputs.pop("labels")
        with torch.no_grad():
            teacher = self.teacher(**inputs).logits
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, teacher, labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss


def distill(cfg, parent, ctx) -> tuple[dict, dict]:
    """The distill stage for a spoken-word classifier: the teacher's AST with fewer encoder layers (spread
    over the depth: lifecycle.components.distillation.pick_layers), patch embedding and head copied, trained
    on the teacher's soft targets at temperature T plus the labels."""
    import time

    from lifecycle.components.classification import seed_everything
    from lifecycle.components.distillation import (
        init_from_teacher,
        student_config,
        student_costs,
        student_layers,
    )

    task = ctx.task
    src = Path(parent.path)
    data = task_data(ctx, src)
    teacher = ASTForAudioClassification.from_pretrained(src).eval()
    layers = student_layers(cfg.student, teacher.config.num_hidden_layers)
    seed_everything(ctx.seed)
    student = ASTForAudioClassification(student_config(teacher.config, layers, cfg.student.overrides))
    details = {"student_layers": layers, "copied_from_teacher": init_from_teacher(student, teacher, layers)}
    started = time.time()
    measured = fit(student, Clips(data.features("train"), data.target("train")), cfg.train,
                   ctx.scratch_dir / "checkpoints", ctx.seed, ctx, trainer_class=DistillationTrainer, teacher=teacher,
                   temperature=cfg.temperature, alpha=cfg.alpha)
    train_seconds = time.time() - started
    save(student, data.preprocessing, ctx.out_dir)
    metrics, scores = scored(student, data, task, ctx)
    test = data.features("test")
    teacher_scores = task.train.evaluate(predict(teacher, test), data.target("test"))
    metrics.update({f"teacher_{k}": v for k, v in teacher_scores.items()},
                   data_wait_fraction=measured.data_wait_fraction,
                   retention=metrics["accuracy"] / teacher_scores["accuracy"] if teacher_scores["accuracy"] else float("nan"),
                   **student_costs(teacher, student, {"input_values": torch.as_tensor(test[:1])}, cfg, ctx.out_dir,
                                   train_seconds))
    return metrics, {**details, **scores, "log_history": measured.log_history}
