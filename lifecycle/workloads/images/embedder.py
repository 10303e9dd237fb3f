"""Image embeddings (`task: {type: image-embedding}`, lifecycle.workloads.images.embedding): the small vision
transformer of lifecycle.workloads.images.model without a head, its token states pooled into one vector per image, and the
finetune recipe that trains it for similarity search.

Pooling is lifecycle.embedding's (`pooling.json` beside the weights, inside the graph after export): `mean`
averages the patch states only, since masked-image pre-training (SimMIM) trains no [CLS] objective; `cls`
reads the [CLS] state. Normalised by default, so a dot product is the cosine that kNN and retrieval use.

The recipe (finetune under this task): contrastive on two augmented views of every training image, the
views of the whole batch as candidates (InfoNCE, lifecycle.embedding.info_nce, both directions), with the
labels as extra positives (SupCon, Khosla et al. 2020): two images of the same class are pulled together
instead of being pushed apart as in-batch negatives. On a labelled source that is what similarity search by
class wants; with one positive per image (SimCLR) an 8x8 digit's views under a 1-pixel shift are easy to
match, and many same-class digits in a batch of 64 would be false negatives.

The distill recipe (distill under this task) keeps the teacher's pooling and trains a shallower student
on the same two views: its embedding of each view is pulled towards the teacher's by cosine (weight
`alpha`, the embedding analogue of soft targets), beside the two-view loss above (1 - alpha).

Reported: kNN accuracy on test with the start model's embeddings (`knn_accuracy_before`) and after, on
validation (`val_knn_accuracy`), the same kNN on the normalised pixels (`baseline_pixels_knn_accuracy`: a
strong baseline on digits, shown whatever it says), and collapse metrics of the kNN labels (so the finetune
stage's default collapse gate applies).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, ViTModel

from lifecycle.workloads.images.model import Images

# Low temperatures weight the hardest negatives most and spread the classes apart on the sphere; with label
# positives the false-negative worry of SimCSE's 0.05 is gone, and SupCon found 0.1 best.
TEMPERATURE = 0.1


def pooled(body, pixel_values, pooling):
    """(batch, dim) embeddings of `pixel_values` by the ViT `body` under `pooling` (plain tensor ops, so
    torch.onnx puts the same computation into the graph)."""
    from lifecycle.embedding import pool

    hidden = body(pixel_values=pixel_values).last_hidden_state
    tokens = hidden if pooling.mode == "cls" else hidden[:, 1:]  # mean: patches only, [CLS] left out
    return pool(tokens, tokens.new_ones(tokens.shape[:2]), pooling)


class ImageEmbedder(torch.nn.Module):
    """ViT body + pooling (+ normalisation): pixel_values -> (batch, hidden size) embeddings."""

    def __init__(self, body, pooling):
        super().__init__()
        self.body, self.config, self.pooling = body, body.config, pooling

    def forward(self, pixel_values):
        return pooled(self.body, pixel_values, self.pooling)


def load(src: Path) -> ImageEmbedder:
    """The embedder of a model directory: a ViT's encoder (an image-embedding finetune, or the encoder of a
    masked-image pre-training: its decoder is left out) and its pooling (pooling.json, else mean + L2)."""
    from lifecycle.embedding import read_pooling

    return ImageEmbedder(ViTModel.from_pretrained(src, add_pooling_layer=False), read_pooling(src)).eval()


@torch.inference_mode()
def embed(model, pixel_values, batch_size: int = 256) -> np.ndarray:
    """Embeddings (float32 numpy) of `pixel_values` (n, C, H, W) from ImagePreprocessing."""
    model.eval()
    x = torch.as_tensor(pixel_values)
    outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).float().numpy() if outs else np.zeros((0, model.config.hidden_size), dtype=np.float32)


class TwoViews(Images):
    """Each training image twice, augmented independently (the contrastive pair), with its label."""

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "second_view": self.pixel_values(i)}


def two_view_loss(a, b, temperature: float, positives=None):
    """InfoNCE (lifecycle.embedding.info_nce) of the first views against the second and back, averaged: each
    view is an anchor once. `positives`: SupCon's same-label matrix (symmetric), None for SimCLR."""
    from lifecycle.embedding import info_nce

    return (info_nce(a, b, temperature, positives) + info_nce(b, a, temperature, positives)) / 2


class ViewsTrainer(Trainer):
    """transformers.Trainer with the two-view contrastive loss on a ViT body (see the module docstring). With
    a `teacher` (distillation), each view's embedding is also pulled towards the teacher's embedding of the
    same view: alpha * (1 - cosine) + (1 - alpha) * the two-view loss."""

    def __init__(self, *args, pooling, temperature: float, teacher=None, alpha: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.pooling, self.temperature, self.teacher, self.alpha = pooling, temperature, teacher, alpha
        self.model_accepts_loss_kwargs = False  # the Trainer then averages over gradient accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        # both views in one forward pass: one call, and one set of layer-norm statistics per step
        views = torch.cat([inputs["pixel_values"], inputs["second_view"]])
        both = pooled(model, views, self.pooling)
        a, b = both.chunk(2)
        same = labels[:, None] == labels[None, :]  # the diagonal (an image's own other view) included
        loss = two_view_loss(a, b, self.temperature, same)
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(views)
            matching = (1 - torch.nn.functional.cosine_similarity(both, target, dim=-1)).mean()
            loss = self.alpha * matching + (1 - self.alpha) * loss
        return (loss, {"embeddings": a}) if return_outputs else loss


def knn_metrics(embed, train, rows, settings, test_x=None):
    """({"knn_accuracy"}, the kNN label per scored image) of the embeddings `embed(images)` makes: the
    `rows` images against the `train` images (ImageSplits), at most `settings.limit` of each. `test_x`:
    the rows' embeddings when already computed; a None among them (a request that got no answer) is
    scored wrong."""
    from lifecycle.embedding import knn_predictions

    n = settings.limit or max(len(train), len(rows))
    test_x = embed(list(rows.images)[:n]) if test_x is None else test_x[:n]
    answered = [i for i, x in enumerate(test_x) if x is not None]
    predicted = [None] * len(test_x)
    if answered:
        found = knn_predictions(embed(list(train.images)[:n]), train.labels[:n],
                                np.asarray([test_x[i] for i in answered], dtype=np.float32), settings.k)
        for i, label in zip(answered, found):
            predicted[i] = label
    right = sum(p == y for p, y in zip(predicted, rows.labels[:n]))
    return {"knn_accuracy": right / max(len(test_x), 1)}, predicted


def knn_report(embedder, data, settings) -> dict:
    """kNN accuracy of `embedder(images)`'s embeddings on test and on validation (`val_knn_accuracy`), each
    image against the training images, and the collapse metrics of its test votes (the default gate)."""
    from lifecycle.components.classification import collapse_metrics

    train = data.splits["train"]
    scores, predicted = knn_metrics(embedder, train, data.splits["test"], settings)
    index = {name: i for i, name in enumerate(data.labels)}
    votes = np.eye(len(data.labels))[[index[p] for p in predicted]]
    return {**scores, "val_knn_accuracy": knn_metrics(embedder, train, data.splits["validation"], settings)[0][
                "knn_accuracy"], **collapse_metrics(votes, data.target("test")[: len(votes)], len(data.labels))}


def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    """The finetune stage for image embeddings: start from the parent (a masked-image pre-training, or an
    earlier image-embedding finetune), `model.path`, or a `preset` (random init); train every weight with
    the two-view contrastive loss; save the encoder with its preprocessing and pooling; score kNN."""
    from lifecycle import models
    from lifecycle.components.adapters import attention_lora, merged
    from lifecycle.components.classification import seed_everything
    from lifecycle.edge import ImagePreprocessing
    from lifecycle.embedding import Pooling, declared_pooling, write_pooling
    from lifecycle.workloads.images.model import fit, latency, save, starting_point, vit_config

    data, source, start = starting_point(cfg, parent, ctx)
    seed_everything(ctx.seed)
    if start is None:
        body = ViTModel(vit_config(data.preprocessing, source), add_pooling_layer=False)
    else:
        body = ViTModel.from_pretrained(start, add_pooling_layer=False)
    model = ImageEmbedder(body, (declared_pooling(start) if start is not None else None) or Pooling())
    pre, settings = ImagePreprocessing(data.preprocessing), ctx.pipeline.task.embedding_settings
    train = data.splits["train"]

    def knn(split, embedder=lambda images: embed(model, pre.transform(images))):
        return knn_metrics(embedder, train, data.splits[split], settings)

    def trained(embedder, budget, out_dir, progress=None):  # progress: the stage's context (the run's bar)
        measured = fit(embedder.body, data, budget, out_dir, ctx.seed, progress, trainer_class=ViewsTrainer,
                       dataset_class=TwoViews, pooling=embedder.pooling, temperature=TEMPERATURE)
        embedder.eval()
        return measured

    before = knn("test")[0]["knn_accuracy"]
    if cfg.lora:  # the patch projection stays as pre-training left it; no head to train in full
        model.body = attention_lora(body, cfg.lora, head=None)
    counts = models.count_parameters(model.body)
    started = time.time()
    measured = trained(model, cfg.train, ctx.scratch_dir / "checkpoints", ctx)
    train_seconds = time.time() - started
    lora = {}
    if cfg.lora:  # merged into the weights, so export and distill see a plain ViTModel
        val = pre.transform(data.splits["validation"].images[:64])
        model.body, lora = merged(model.body, ctx.out_dir,
                                  lambda m: embed(ImageEmbedder(m, model.pooling), val))
    body = model.body
    save(body, data.preprocessing, ctx.out_dir)
    write_pooling(ctx.out_dir, model.pooling)
    details = {"log_history": measured.log_history, "labels": data.labels, "data_stats": data.stats,
               "image_size": body.config.image_size, "patch_size": body.config.patch_size,
               "augment": data.spec.augment.model_dump(), "pooling": model.pooling.model_dump(),
               "temperature": TEMPERATURE}

    scores = knn_report(lambda images: embed(model, pre.transform(images)), data, settings)
    pixels = knn("test", lambda images: pre.transform(images).reshape(len(images), -1))[0]
    control = {}
    if cfg.control is not None:  # the same architecture from random init, same data, budget, seed and pooling
        seed_everything(ctx.seed)
        scratch = ImageEmbedder(ViTModel(body.config, add_pooling_layer=False), model.pooling)
        trained(scratch, cfg.control.train or cfg.train, ctx.scratch_dir / "control")
        control["control_knn_accuracy"] = knn("test", lambda images: embed(scratch, pre.transform(images)))[0][
            "knn_accuracy"]
        control["pretraining_gain"] = scores["knn_accuracy"] - control["control_knn_accuracy"]
    return {"data_wait_fraction": measured.data_wait_fraction, **scores, **control, "knn_accuracy_before": before, "knn_accuracy_gain": scores["knn_accuracy"] - before,
            "baseline_pixels_knn_accuracy": pixels["knn_accuracy"],
            **counts, "trainable_fraction": counts["params_trainable"] / counts["params_total"],
            "size_mb": models.size_mb(ctx.out_dir / "model.safetensors"), "train_seconds": train_seconds,
            "temperature": TEMPERATURE, **lora, **latency(model, pre.transform(data.splits["test"].images))}, details


def distill(cfg, parent, ctx) -> tuple[dict, dict]:
    """The distill stage for an image embedder: the teacher's ViT with fewer encoder layers (spread over the
    depth, first and last kept), patch embedding copied, its pooling kept; trained on two augmented views of
    every training image to match the teacher's embedding of each view by cosine (weight `alpha`) and by
    the finetune's two-view contrastive loss with label positives (1 - alpha). A logit temperature has no
    meaning here (refused at load). Reported: kNN accuracy of student and teacher on the same test images,
    `retention`, the student's mean cosine to the teacher's embeddings (`teacher_cosine_mean`), speedup."""
    from lifecycle.components.classification import seed_everything
    from lifecycle.components.distillation import (
        init_from_teacher,
        student_config,
        student_costs,
        student_layers,
    )
    from lifecycle.edge import ImagePreprocessing
    from lifecycle.embedding import write_pooling
    from lifecycle.workloads.images.model import fit, read_through_model, save

    src = Path(parent.path)
    data = read_through_model(ctx.task_data(), src)
    teacher = load(src)
    layers = student_layers(cfg.student, teacher.config.num_hidden_layers)
    seed_everything(ctx.seed)
    student = ImageEmbedder(ViTModel(student_config(teacher.config, layers, cfg.student.overrides),
                                     add_pooling_layer=False), teacher.pooling)
    details = {"student_layers": layers,
               "copied_from_teacher": init_from_teacher(student.body, teacher.body, layers),
               "pooling": student.pooling.model_dump(), "temperature": TEMPERATURE}
    started = time.time()
    measured = fit(student.body, data, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx,
                   trainer_class=ViewsTrainer, dataset_class=TwoViews, pooling=student.pooling,
                   temperature=TEMPERATURE, teacher=teacher, alpha=cfg.alpha)
    train_seconds = time.time() - started
    details["log_history"] = measured.log_history
    save(student.body, data.preprocessing, ctx.out_dir)
    write_pooling(ctx.out_dir, student.pooling)

    pre = ImagePreprocessing(data.preprocessing)
    scores = knn_report(lambda images: embed(student, pre.transform(images)), data,
                        ctx.pipeline.task.embedding_settings)
    teacher_knn = knn_metrics(lambda images: embed(teacher, pre.transform(images)), data.splits["train"],
                                   data.splits["test"], ctx.pipeline.task.embedding_settings)[0]["knn_accuracy"]
    test_x = pre.transform(data.splits["test"].images)
    s_x, t_x = embed(student, test_x), embed(teacher, test_x)
    cosine = (s_x * t_x).sum(-1) / (np.linalg.norm(s_x, axis=-1) * np.linalg.norm(t_x, axis=-1))
    return {"data_wait_fraction": measured.data_wait_fraction, **scores, "teacher_knn_accuracy": teacher_knn,
            "retention": scores["knn_accuracy"] / teacher_knn if teacher_knn else float("nan"),
            "teacher_cosine_mean": float(cosine.mean()),
            **student_costs(teacher, student, {"pixel_values": torch.as_tensor(test_x[:1])}, cfg, ctx.out_dir,
                            train_seconds)}, details
