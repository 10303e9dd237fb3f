"""A small vision transformer for image classification (transformers' ViTForImageClassification built from
a config), its training-only augmentation, and the finetune and distill recipes of the image task
(lifecycle.workloads.images.classification).

Why ViT from a config: it is a Hugging Face model (config.json + safetensors), so masked-image
pre-training (ViTForMaskedImageModeling, lifecycle.workloads.images.masked) writes a checkpoint this model loads
directly, the Trainer trains it, and torch.onnx exports it as it exports our text encoders.

Sizes: a `preset` gives depth and width (bert-tiny: 2 layers, hidden 64); the image side comes from the
data's preprocessing and the patch side from `model.overrides.patch_size` (default: side // 4, so 16
patches: an 8x8 digit gets 2x2 patches). Smaller patches see finer detail and cost attention quadratic
in their number.

Every image goes through lifecycle.edge.ImagePreprocessing (the one transform); augmentation (lifecycle.
data.images.Augment) works on the uint8 pixels before it, in training only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, ViTConfig, ViTForImageClassification

from lifecycle.edge import IMAGE_PROCESSOR, ImagePreprocessing


def vit_config(preprocessing: dict, source=None, **head) -> ViTConfig:
    """A ViTConfig for images as `preprocessing` makes them (side, channels), sized by a ModelSource preset
    and its overrides (patch_size among them); `head`: num_labels, id2label, label2id."""
    from lifecycle import models

    fields = {**models.PRESETS[source.preset](), **source.overrides} if source is not None else {}
    for key in ("family", "max_position_embeddings", "vocab_size"):
        fields.pop(key, None)
    side = preprocessing["size"]["height"]
    patch = fields.pop("patch_size", max(1, side // 4))
    if side % patch:
        raise ValueError(f"model.overrides.patch_size: {patch} does not divide the image side {side}")
    return ViTConfig(image_size=side, patch_size=patch, encoder_stride=patch,
                     num_channels=len(preprocessing["image_mean"]), **{**fields, **head})


def head(labels: list[str]) -> dict:
    id2label = dict(enumerate(labels))
    return {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


# ------------------------------------------------------------------------------------- augmentation
def augment(pixels: np.ndarray, aug, rng: np.random.Generator, resample: int) -> np.ndarray:
    """Training-only augmentation of one image (uint8, the model's size and mode): random resized crop,
    shift, flip, brightness and contrast, in that order. Returns uint8 of the same shape."""
    from PIL import Image, ImageEnhance

    im = Image.fromarray(pixels)
    w, h = im.size
    lo, hi = aug.crop_scale
    if hi < 1.0 or lo < 1.0:
        area = rng.uniform(lo, hi) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = (min(w, max(1, round(np.sqrt(area * ratio)))), min(h, max(1, round(np.sqrt(area / ratio)))))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        im = im.resize((w, h), resample=resample, box=(int(x), int(y), int(x + cw), int(y + ch)))
    if aug.translate:
        dx, dy = rng.integers(-aug.translate, aug.translate + 1, size=2)
        im = im.transform((w, h), Image.Transform.AFFINE, (1, 0, -int(dx), 0, 1, -int(dy)), fillcolor=0)
    if aug.flip and rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.brightness:
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(1 - aug.brightness, 1 + aug.brightness))
    if aug.contrast:
        im = ImageEnhance.Contrast(im).enhance(rng.uniform(1 - aug.contrast, 1 + aug.contrast))
    return np.asarray(im, dtype=np.uint8)


class Images(torch.utils.data.Dataset):
    """Images and their targets as the Trainer's default collator stacks them: `pixel_values` through the
    one transform, augmented afresh at every draw when `aug` is on."""

    def __init__(self, images: list, targets, preprocessing: dict, aug=None, seed: int = 0):
        self.pre = ImagePreprocessing(preprocessing)
        self.pixels = np.stack([self.pre.pixels(im) for im in images])  # uint8, the model's size
        self.clean = torch.from_numpy(self.pre.normalise(self.pixels))
        self.targets = None if targets is None else torch.as_tensor(targets)
        self.aug = None if aug is None or aug.off else aug
        self.rng = np.random.default_rng(seed)
        self.resample = preprocessing.get("resample", 2)

    def __len__(self) -> int:
        return len(self.pixels)

    def pixel_values(self, i: int) -> torch.Tensor:
        if self.aug is None:
            return self.clean[i]
        return torch.from_numpy(self.pre.normalise(augment(self.pixels[i], self.aug, self.rng, self.resample)[None])[0])

    def __getitem__(self, i: int) -> dict:
        item = {"pixel_values": self.pixel_values(i)}
        return item if self.targets is None else {**item, "labels": self.targets[i]}


# ------------------------------------------------------------------------------------ model helpers
@torch.inference_mode()
def predict(model, pixel_values, batch_size: int = 256) -> np.ndarray:
    """Logits (float32 numpy) for `pixel_values` (n, C, H, W) from ImagePreprocessing."""
    model.eval()
    x = torch.as_tensor(pixel_values)
    outs = [model(pixel_values=x[i : i + batch_size]).logits for i in range(0, len(x), batch_size)]
    return torch.cat(outs).float().numpy() if outs else np.zeros((0, model.config.num_labels), dtype=np.float32)


def export_onnx(model, sample, path: Path, opset: int = 17, output: str = "logits") -> None:
    """torch.onnx (TorchScript path, as for text graphs): input `pixel_values` with a dynamic batch axis."""
    from lifecycle import quiet

    model.eval()
    with torch.inference_mode(), quiet.onnx_export():
        torch.onnx.export(model, (torch.as_tensor(sample[:2]),), str(path), input_names=["pixel_values"],
                          output_names=[output], dynamic_axes={"pixel_values": {0: "batch"}, output: {0: "batch"}},
                          opset_version=opset, dynamo=False)


def latency(model, pixel_values) -> dict:
    """PyTorch eager p50/p95/p99 at batch 1 (torch_latency_*) and batch 32 (torch_latency_b32_*)."""
    from lifecycle.evaluation.latency import measure

    x = torch.as_tensor(pixel_values)
    one, many = x[:1], x[torch.arange(32) % len(x)]  # batch 32 from however many images there are
    with torch.inference_mode():
        found = measure(lambda: model(pixel_values=one), 3, 20)
        b32 = measure(lambda: model(pixel_values=many), 2, 10)
    return {**found, **{k.replace("latency_", "latency_b32_"): v for k, v in b32.items()}}


def fit(model, data, train, out_dir: Path, seed: int = 0, ctx=None, trainer_class=Trainer, dataset_class=None,
        **extra):
    """Train on `data`'s training split (lifecycle.data.images.ImageData) with the Trainer, augmented as
    its source says; `train` is a TrainConfig; `dataset_class`: an Images subclass (None: Images). Leaves
    the model in eval mode; returns what training measured for the stage (lifecycle.components.training.train)."""
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args

    out_dir = Path(out_dir)
    args = training_args(train, out_dir, seed, eval_strategy="no", save_strategy="no", remove_unused_columns=False)
    dataset = (dataset_class or Images)(data.splits["train"].images, data.target("train"), data.preprocessing, data.spec.augment, seed)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, **extra)
    measured = run_trainer(trainer, out_dir, ctx)
    model.eval()
    return measured


def save(model, preprocessing: dict, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    (Path(out) / IMAGE_PROCESSOR).write_text(json.dumps(preprocessing, indent=2))


def read_through_model(data, start: Path):
    """The data read through the preprocessing saved with the model at `start` (a pre-trained one's)."""
    from lifecycle import LifecycleError

    if not (start / IMAGE_PROCESSOR).is_file():
        raise LifecycleError(f"{start}: not an image model (no {IMAGE_PROCESSOR}); start an image task from a "
                             "`preset` or a masked-image pretrain stage")
    return data.read_through(json.loads((start / IMAGE_PROCESSOR).read_text()), start)


# ---------------------------------------------------------------------------------------- recipes
def starting_point(cfg, parent, ctx):
    """(the task's data, the stage's model source, the model directory it starts from) for a finetune stage
    `cfg`: the parent's artifact, or `model.path` (resolved), or None for a `preset` (built from scratch).
    The data is read through the start model's own preprocessing."""
    data = ctx.task_data()
    source = cfg.model
    if source is not None and source.path:
        source = source.model_copy(update={"path": str(ctx.pipeline.resolve(source.path))})
    start = Path(parent.path) if source is None else Path(source.path) if source.path else None
    return (data if start is None else read_through_model(data, start)), source, start


def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    """The finetune stage for an image classifier: build (a preset) or load (the parent, or `model.path`)
    with a new head, train every weight, save with its preprocessor_config.json, score on test beside
    the from-scratch control (when asked) and the RBF SVM (always)."""
    import time

    from lifecycle import models
    from lifecycle.components.adapters import attention_lora, merged
    from lifecycle.components.classification import seed_everything
    from lifecycle.workloads.images.evaluation import svm_baseline

    task = ctx.task
    data, source, start = starting_point(cfg, parent, ctx)
    seed_everything(ctx.seed)
    if start is None:
        model = ViTForImageClassification(vit_config(data.preprocessing, source, **head(data.labels)))
    else:
        config = ViTConfig.from_pretrained(start)
        config.update(head(data.labels))
        model = ViTForImageClassification.from_pretrained(start, config=config, ignore_mismatched_sizes=True)
    if cfg.lora:  # the patch projection stays as pre-training left it
        model = attention_lora(model, cfg.lora, head="classifier")
    counts = models.count_parameters(model)
    started = time.time()
    measured = fit(model, data, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx)
    train_seconds = time.time() - started
    test, val = data.pixel_values("test"), data.pixel_values("validation")
    lora = {}
    if cfg.lora:  # merged into the weights, so export and distill see a plain ViTForImageClassification
        model, lora = merged(model, ctx.out_dir, lambda m: predict(m, val[:64]))
    save(model, data.preprocessing, ctx.out_dir)
    details = {"log_history": measured.log_history, "labels": data.labels, "data_stats": data.stats,
               "image_size": model.config.image_size, "patch_size": model.config.patch_size,
               "augment": data.spec.augment.model_dump()}

    metrics = {"data_wait_fraction": measured.data_wait_fraction, **task.train.test_metrics(predict(model, test), data.target("test")),
               **{f"val_{k}": v for k, v in task.train.evaluate(predict(model, val), data.target("validation")).items()},
               **counts, "trainable_fraction": counts["params_trainable"] / counts["params_total"],
               "size_mb": models.size_mb(ctx.out_dir / "model.safetensors"), "train_seconds": train_seconds,
               **lora, **latency(model, test)}
    if cfg.control is not None:  # the same architecture from random init, same data, budget and seed
        seed_everything(ctx.seed)
        scratch = ViTForImageClassification(model.config)
        fit(scratch, data, cfg.control.train or cfg.train, ctx.scratch_dir / "control", ctx.seed)
        metrics.update({f"control_{k}": v for k, v in task.train.evaluate(predict(scratch, test), data.target("test")).items()})
        metrics["pretraining_gain"] = metrics["accuracy"] - metrics["control_accuracy"]
    metrics.update(svm_baseline(data, ctx.seed))
    return metrics, details


class DistillationTrainer(Trainer):
    """Soft targets from the teacher on the very batch the student sees (augmented images included: cached
    teacher logits of the clean images would not match them), plus the labels."""

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
    """The distill stage for an image classifier: the teacher's ViT with fewer encoder layers (spread over
    the depth, first and last kept: lifecycle.components.distillation.pick_layers), patch embedding and
    head copied, trained on the teacher's soft targets at temperature T plus the labels."""
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
    data = read_through_model(ctx.task_data(), src)
    teacher = ViTForImageClassification.from_pretrained(src).eval()
    layers = student_layers(cfg.student, teacher.config.num_hidden_layers)
    config = student_config(teacher.config, layers, cfg.student.overrides)
    seed_everything(ctx.seed)
    student = ViTForImageClassification(config)
    details = {"student_layers": layers, "copied_from_teacher": init_from_teacher(student, teacher, layers)}
    started = time.time()
    measured = fit(student, data, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx,
                   trainer_class=DistillationTrainer, teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha)
    train_seconds = time.time() - started
    details["log_history"] = measured.log_history
    save(student, data.preprocessing, ctx.out_dir)

    test, val = data.pixel_values("test"), data.pixel_values("validation")
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **task.train.test_metrics(predict(student, test), data.target("test")),
               **{f"val_{k}": v for k, v in task.train.evaluate(predict(student, val), data.target("validation")).items()}}
    teacher_scores = task.train.evaluate(predict(teacher, test), data.target("test"))
    metrics.update({f"teacher_{k}": v for k, v in teacher_scores.items()},
                   retention=metrics["accuracy"] / teacher_scores["accuracy"] if teacher_scores["accuracy"] else float("nan"),
                   **student_costs(teacher, student, {"pixel_values": torch.as_tensor(test[:1])}, cfg, ctx.out_dir,
                                   train_seconds))
    return metrics, details
