"""Masked-image pre-training (`pretrain` with `objective: masked-image`): SimMIM (Xie et al. 2022) through
transformers' ViTForMaskedImageModeling. A share of the patches of each image (`mlm_probability`) is
replaced by a learned mask token, the encoder sees every position, and a one-layer decoder (1x1 conv +
pixel shuffle) predicts the raw pixels; the loss is L1 on the masked patches only.

Why SimMIM and not MAE (ViTMAEForPreTraining): SimMIM's encoder is exactly ViTForImageClassification's
(`vit.*`, the same config), so the finetune stage loads this artifact with a new head and nothing to
convert; MAE's encoder is a ViTMAEModel (another model type, random-shuffle masking that drops tokens)
whose weights need renaming into a ViT. And on images of 16 patches (8x8 digits, 2x2 patches), MAE's 75%
masking leaves its encoder 4 tokens to see; SimMIM's encoder processes all 16 at pre-training and at
fine-tuning alike. Measured at digits.yaml's budget (benchmarks/masked_image.py, linear probe on validation):
SimMIM 0.839, MAE at 50% masking 0.844 (one image of 180 more), MAE at its usual 75% 0.739 — a tie with MAE
at SimMIM's mask ratio, so the conversion-free encoder decides; neither beats the untrained encoder's 0.922.

Metrics: `reconstruction_loss` on held-out validation images with a fixed mask (and `_init`, the same
before training), and a linear probe (logistic regression on the frozen encoder's mean patch state, fit on
train, scored on validation) before and after: `probe_accuracy_init`, `probe_accuracy`, `probe_gain`.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import ViTForMaskedImageModeling

from lifecycle.workloads.images.model import Images, save, vit_config


class MaskedImages(Images):
    """Images (augmented as the source says) with a fresh random patch mask per draw, at least one patch."""

    def __init__(self, images, preprocessing, aug, fraction: float, patches: int, seed: int):
        super().__init__(images, None, preprocessing, aug, seed)
        self.fraction, self.patches = fraction, patches
        self.generator = torch.Generator().manual_seed(seed)

    def __getitem__(self, i: int) -> dict:
        masked = torch.rand(self.patches, generator=self.generator) < self.fraction
        masked[torch.randint(self.patches, (1,), generator=self.generator)] = True
        return {**super().__getitem__(i), "bool_masked_pos": masked}


def patches(config) -> int:
    return (config.image_size // config.patch_size) ** 2


@torch.inference_mode()
def reconstruction_loss(model, images, preprocessing, fraction: float, seed: int) -> float:
    """Mean masked-patch L1 over held-out images, the masks drawn with a fixed seed (the same every call)."""
    model.eval()
    data = MaskedImages(images, preprocessing, None, fraction, patches(model.config), seed)
    batch = [data[i] for i in range(len(data))]
    losses = []
    for start in range(0, len(batch), 256):
        part = batch[start : start + 256]
        out = model(pixel_values=torch.stack([b["pixel_values"] for b in part]),
                    bool_masked_pos=torch.stack([b["bool_masked_pos"] for b in part]))
        losses.append(float(out.loss) * len(part))
    return sum(losses) / len(batch)


@torch.inference_mode()
def features(vit, pixel_values) -> np.ndarray:
    """The frozen encoder's mean patch state per image (SimMIM trains no [CLS] objective)."""
    vit.eval()
    x = torch.as_tensor(pixel_values)
    return torch.cat([vit(pixel_values=x[i : i + 256]).last_hidden_state[:, 1:].mean(1)
                      for i in range(0, len(x), 256)]).numpy()


def linear_probe(vit, data) -> float:
    """Logistic regression on frozen features: fit on train, accuracy on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(vit, data.pixel_values("train")), data.target("train"))
    return float(probe.score(features(vit, data.pixel_values("validation")), data.target("validation")))


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """The pretrain stage's masked-image objective on the image source `cfg.data` (its labels unused, but
    for the probe)."""
    import time

    from transformers import Trainer

    from lifecycle import LifecycleError, models
    from lifecycle.components.classification import seed_everything
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args

    data = ctx.data(cfg.data)
    if not hasattr(data, "pixel_values"):
        raise LifecycleError(f"pretrain: data '{cfg.data}' holds no images; `objective: masked-image` reads an "
                             "image source (imagefolder or sklearn-digits)")
    seed_everything(ctx.seed)
    model = ViTForMaskedImageModeling(vit_config(data.preprocessing, cfg.model))
    val = data.splits["validation"].images
    metrics = {"reconstruction_loss_init": reconstruction_loss(model, val, data.preprocessing, cfg.mlm_probability,
                                                               ctx.seed + 1)}
    probe_init = linear_probe(model.vit, data) if data.labels else None
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no",
                         remove_unused_columns=False)
    train = MaskedImages(data.splits["train"].images, data.preprocessing, data.spec.augment, cfg.mlm_probability,
                         patches(model.config), ctx.seed)
    started = time.time()
    measured = run_trainer(Trainer(model=model, args=args, train_dataset=train), ctx.scratch_dir / "checkpoints", ctx)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **metrics}
    metrics.update(reconstruction_loss=reconstruction_loss(model, val, data.preprocessing, cfg.mlm_probability,
                                                           ctx.seed + 1),
                   train_seconds=time.time() - started, params_total=models.count_parameters(model)["params_total"])
    if probe_init is not None:
        metrics.update(probe_accuracy_init=probe_init, probe_accuracy=linear_probe(model.vit, data))
        metrics["probe_gain"] = metrics["probe_accuracy"] - probe_init
    save(model.eval(), data.preprocessing, ctx.out_dir)
    return metrics, {"log_history": measured.log_history, "objective": "masked-image",
                     "mask_fraction": cfg.mlm_probability, "data_stats": data.stats,
                     "image_size": model.config.image_size, "patch_size": model.config.patch_size}
