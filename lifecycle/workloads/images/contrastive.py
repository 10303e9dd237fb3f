"""Contrastive pre-training of an image model (`pretrain` with `objective: contrastive` on an image source):
SimCLR (Chen et al. 2020). Each training image is drawn twice, each view augmented independently as the
source's `image.augment` says (lifecycle.workloads.images.model.augment, the finetune stage's own augmentation); the mean of
the ViT's patch states goes through a two-layer projection, and each view must pick the other view of its
own image out of the batch: InfoNCE with in-batch negatives, in both directions
(lifecycle.workloads.images.embedder.two_view_loss). Labels are unused, but for the probe.

Trade-offs:
- The views differ only as much as the augmentation makes them. With none, both views are the same tensor
  and the loss is met by spreading images apart with nothing to be invariant to, so the stage refuses a
  source without augmentation at load. On 8x8 digits a 1-pixel shift and a mild crop are all a digit
  tolerates; a harder augmentation would teach more invariance on photos.
- The projection is trained and saved but later stages leave it behind: they load `vit.*`, exactly as
  after masked-image pre-training (SimCLR found the state before the projection transfers better).
- In-batch negatives: `train.batch_size` sets how many (b - 1 per view); with one positive per image, two
  digits of the same class in a batch are pushed apart (the false negatives the image-embedding finetune
  avoids with its labels; pre-training has none to use).
- Temperature: `contrastive.temperature` when given, else 0.1 (SimCLR's range is 0.1-0.5; the text
  objective's 0.05 weights the hardest negatives, here often same-class digits, even more).

Metrics on held-out validation images (two views drawn with a fixed seed, in batches of the training batch
size): `contrastive_loss` and `contrastive_top1` beside their chance levels (lifecycle.embedding.
retrieval_scores, as SCARF reports them), and the masked-image path's linear probe before/after
(`probe_accuracy_init`, `probe_accuracy`, `probe_gain`, lifecycle.workloads.images.masked.linear_probe).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import ViTConfig, ViTModel, ViTPreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from lifecycle.embedding import Pooling
from lifecycle.workloads.images.embedder import TEMPERATURE, TwoViews, pooled, two_view_loss

FEATURES = Pooling(normalize=False)  # mean of the patch states; the loss normalises after the projection


class ViTContrastive(ViTPreTrainedModel):
    """A ViT encoder (`vit.*`, the keys ViTForImageClassification and ViTModel load) plus SimCLR's
    projection head; forward takes two views of a batch and returns the two-view InfoNCE loss."""

    def __init__(self, config):
        super().__init__(config)
        self.vit = ViTModel(config, add_pooling_layer=False)
        hidden = config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.post_init()

    def embed(self, pixel_values):
        return self.projection(pooled(self.vit, pixel_values, FEATURES))

    def forward(self, pixel_values, second_view, labels=None, **_):
        # both views in one forward pass: one call per step
        a, b = self.embed(torch.cat([pixel_values, second_view])).chunk(2)
        return ImageClassifierOutput(loss=two_view_loss(a, b, self.config.contrastive_temperature), logits=a)


@torch.inference_mode()
def held_out(model: ViTContrastive, images, preprocessing: dict, aug, seed: int, batch_size: int) -> dict:
    """lifecycle.embedding.retrieval_scores of two views of each held-out image, drawn with a fixed seed."""
    from lifecycle.embedding import retrieval_scores

    model.eval()
    views = TwoViews(images, None, preprocessing, aug, seed)
    items = [views[i] for i in range(len(views))]
    first, second = (torch.stack([it[key] for it in items]) for key in ("pixel_values", "second_view"))
    embed = lambda x: torch.cat([model.embed(x[i : i + 256]) for i in range(0, len(x), 256)])  # noqa: E731
    return retrieval_scores(embed(first), embed(second), model.config.contrastive_temperature, batch_size)


def pretrain(cfg, parent, ctx, start: Path | None = None) -> tuple[dict, dict]:
    """The pretrain stage's contrastive objective on the image source `cfg.data`, from a preset; the adapt
    stage's from the image model at `start` (a masked-image or contrastive pre-training: its encoder, read
    through its own preprocessing; a projection it lacks starts random). The stage's config has refused, at
    load, the settings that do not apply to images and a source without augmentation."""
    import time

    from transformers import Trainer

    from lifecycle import models
    from lifecycle.components.classification import seed_everything
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args
    from lifecycle.workloads.images.masked import linear_probe
    from lifecycle.workloads.images.model import read_through_model, save, vit_config

    settings = cfg.contrastive
    temperature = settings.temperature if settings is not None and "temperature" in settings.model_fields_set \
        else TEMPERATURE
    data = ctx.data(cfg.data) if start is None else read_through_model(ctx.data(cfg.data), start)
    aug = data.spec.augment
    seed_everything(ctx.seed)
    if start is None:
        model = ViTContrastive(vit_config(data.preprocessing, cfg.model, contrastive_temperature=temperature))
    else:
        config = ViTConfig.from_pretrained(start)
        config.update({"contrastive_temperature": temperature})
        model = ViTContrastive.from_pretrained(start, config=config)
    val = data.splits["validation"].images
    before = held_out(model, val, data.preprocessing, aug, ctx.seed + 1, cfg.train.batch_size)
    probe_init = linear_probe(model.vit, data) if data.labels else None
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no",
                         remove_unused_columns=False)
    train = TwoViews(data.splits["train"].images, None, data.preprocessing, aug, ctx.seed)
    started = time.time()
    measured = run_trainer(Trainer(model=model, args=args, train_dataset=train), ctx.scratch_dir / "checkpoints", ctx)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **held_out(model, val, data.preprocessing, aug, ctx.seed + 1, cfg.train.batch_size),
               "contrastive_loss_init": before["contrastive_loss"], "contrastive_top1_init": before["contrastive_top1"],
               "train_seconds": time.time() - started, "params_total": models.count_parameters(model)["params_total"]}
    if probe_init is not None:
        metrics.update(probe_accuracy_init=probe_init, probe_accuracy=linear_probe(model.vit, data))
        metrics["probe_gain"] = metrics["probe_accuracy"] - probe_init
    save(model.eval(), data.preprocessing, ctx.out_dir)
    return metrics, {"log_history": measured.log_history, "objective": "contrastive (SimCLR)",
                     "temperature": temperature, "augment": aug.model_dump(), "data_stats": data.stats,
                     "image_size": model.config.image_size, "patch_size": model.config.patch_size,
                     **({"start": str(start)} if start is not None else {})}


def adapt(cfg, parent, ctx) -> tuple[dict, dict]:
    """The adapt recipe on images: SimCLR continued from the parent (or `model:`)."""
    from lifecycle import models

    start = models.model_dir(cfg.model, ctx.pipeline) if cfg.model is not None else Path(parent.path)
    return pretrain(cfg, parent, ctx, start=start)
