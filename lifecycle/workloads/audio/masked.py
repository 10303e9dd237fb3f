"""Masked-spectrogram pre-training (`pretrain` / `adapt` with `objective: masked-spectrogram`), the generative
half of SSAST (Gong et al. 2022) as Audio-MAE's reconstruction target: a share of the spectrogram's patches
(`mlm_probability`) is replaced by a learned mask token, the AST encoder sees every position, and a linear
decoder predicts each masked patch's log-mel values; the loss is the mean squared error on masked patches.

Why SSAST's masking and not Audio-MAE's dropping: the encoder here is exactly ASTForAudioClassification's
(`audio_spectrogram_transformer.*`, the same config), so the finetune stage loads this artifact with a new
head and nothing to convert, and it sees all positions at pre-training as at fine-tuning.

Data: the clips of the stage's `data` source (unlabelled; its training split), plus, under a pretrain
stage, the training clips of the task's own source with their labels unused (never its validation or test
clips), as SSAST pre-trains on the downstream audio too. Metrics: `reconstruction_loss` on the source's
validation clips with a fixed mask (and `_init`, the same before training), and a linear probe (logistic
regression on the frozen encoder's mean patch state, fit on the task's training clips, scored on its
validation clips) before and after: `probe_accuracy_init`, `probe_accuracy`, `probe_gain`. Every source
the task's data names in `audio.also_test` gets its reconstruction loss before and after in the details:
how much closer adaptation brought the model to that speech.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTModel,
    ASTPreTrainedModel,
)

from lifecycle.workloads.audio.model import Clips, ast_config, save, with_frames


class ASTForMaskedSpectrogram(ASTPreTrainedModel):
    """ASTModel (saved under the prefix ASTForAudioClassification loads), a mask token and a linear decoder
    from each patch's final state to its log-mel values."""

    def __init__(self, config):
        super().__init__(config)
        self.audio_spectrogram_transformer = ASTModel(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.decoder = nn.Linear(config.hidden_size, config.patch_size**2)
        self.post_init()

    def patches(self, input_values: torch.Tensor) -> torch.Tensor:
        """(batch, patches, patch_size**2): each patch's values, in the order the patch embedding flattens them."""
        c = self.config
        x = input_values.unsqueeze(1).transpose(2, 3)  # (batch, 1, mel bins, frames), as ASTPatchEmbeddings sees it
        return nn.functional.unfold(x, c.patch_size, stride=(c.frequency_stride, c.time_stride)).transpose(1, 2)

    def forward(self, input_values, bool_masked_pos, **_):
        ast = self.audio_spectrogram_transformer
        emb = ast.embeddings
        tokens = emb.patch_embeddings(input_values)
        w = bool_masked_pos.unsqueeze(-1).type_as(tokens)
        tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        n = len(tokens)
        x = torch.cat((emb.cls_token.expand(n, -1, -1), emb.distillation_token.expand(n, -1, -1), tokens), 1)
        x = emb.dropout(x + emb.position_embeddings)
        states = ast.layernorm(ast.encoder(x).last_hidden_state)
        predicted = self.decoder(states[:, 2:])
        loss = ((predicted - self.patches(input_values)) ** 2).mean(-1)[bool_masked_pos].mean()
        return {"loss": loss, "reconstruction": predicted}


def patch_count(config) -> int:
    f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    t = (config.max_length - config.patch_size) // config.time_stride + 1
    return f * t


class MaskedClips(Clips):
    """Spectrograms with a fresh random patch mask per draw, at least one patch masked."""

    def __init__(self, values, fraction: float, patches: int, seed: int):
        super().__init__(values)
        self.fraction, self.patches = fraction, patches
        self.generator = torch.Generator().manual_seed(seed)

    def __getitem__(self, i: int) -> dict:
        masked = torch.rand(self.patches, generator=self.generator) < self.fraction
        masked[torch.randint(self.patches, (1,), generator=self.generator)] = True
        return {**super().__getitem__(i), "bool_masked_pos": masked}


@torch.inference_mode()
def reconstruction_loss(model, values, fraction: float, seed: int) -> float:
    """Mean masked-patch squared error over held-out spectrograms, the masks drawn with a fixed seed."""
    model.eval()
    data = MaskedClips(values, fraction, patch_count(model.config), seed)
    total = 0.0
    for start in range(0, len(data), 256):
        part = [data[i] for i in range(start, min(len(data), start + 256))]
        out = model(input_values=torch.stack([b["input_values"] for b in part]),
                    bool_masked_pos=torch.stack([b["bool_masked_pos"] for b in part]))
        total += float(out["loss"]) * len(part)
    return total / max(1, len(data))


@torch.inference_mode()
def features(ast, values) -> np.ndarray:
    """The frozen encoder's mean patch state per clip."""
    ast.eval()
    x = torch.as_tensor(values)
    return torch.cat([ast(input_values=x[i : i + 256]).last_hidden_state[:, 2:].mean(1)
                      for i in range(0, len(x), 256)]).numpy()


def linear_probe(ast, task) -> float:
    """Logistic regression on frozen features: fit on the task's training clips, accuracy on its validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(ast, task.features("train")), task.target("train"))
    return float(probe.score(features(ast, task.features("validation")), task.target("validation")))


def _train(cfg, ctx, model, data, task, extra_train=()):
    """Train `model` on `data`'s training clips (and `extra_train` spectrograms); the metrics before and after."""
    import time

    from transformers import Trainer

    from lifecycle import models
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args
    from lifecycle.workloads.audio.evaluation import also_sets

    fraction, seed = cfg.mlm_probability, ctx.seed + 1
    val = data.features("validation")
    others = {name: other.features("test") for name, other in also_sets(task, ctx).items()} if task else {}
    before = {name: reconstruction_loss(model, v, fraction, seed) for name, v in others.items()}
    metrics = {"reconstruction_loss_init": reconstruction_loss(model, val, fraction, seed)}
    probe_init = linear_probe(model.audio_spectrogram_transformer, task) if task else None
    values = np.concatenate([data.features("train"), *extra_train])
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no",
                         remove_unused_columns=False)
    started = time.time()
    train = MaskedClips(values, fraction, patch_count(model.config), ctx.seed)
    measured = run_trainer(Trainer(model=model, args=args, train_dataset=train), ctx.scratch_dir / "checkpoints", ctx)
    model.eval()
    metrics.update(data_wait_fraction=measured.data_wait_fraction, train_seconds=time.time() - started,
                   reconstruction_loss=reconstruction_loss(model, val, fraction, seed),
                   params_total=models.count_parameters(model)["params_total"])
    if probe_init is not None:
        metrics.update(probe_accuracy_init=probe_init, probe_accuracy=linear_probe(model.audio_spectrogram_transformer, task))
        metrics["probe_gain"] = metrics["probe_accuracy"] - probe_init
    also = {name: {"reconstruction_loss_init": before[name], "reconstruction_loss": reconstruction_loss(model, v, fraction, seed)}
            for name, v in others.items()}
    save(model, data.preprocessing, ctx.out_dir)
    return metrics, {"log_history": measured.log_history, "objective": "masked-spectrogram", "mask_fraction": fraction,
                     "data_stats": data.stats, "training_clips": len(values), "also_test": also,
                     "spectrogram": {"frames": model.config.max_length, "mel_bins": model.config.num_mel_bins,
                                     "patch_size": model.config.patch_size, "stride": model.config.time_stride}}


def _task(ctx, preprocessing):
    """The pipeline's task data read through `preprocessing` when the task is an audio one, else None."""
    if ctx.pipeline.data[ctx.pipeline.task.data].reads != "audio":
        return None
    return ctx.task_data().read_through(preprocessing, ctx.pipeline.task.data)


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """The pretrain stage's masked-spectrogram objective: an AST from a preset on the stage's unlabelled clips
    and the task's training clips, at the task's frames per clip."""
    from lifecycle.components.classification import seed_everything

    data = with_frames(ctx.data(cfg.data), ctx.pipeline.task.max_length)
    task = _task(ctx, data.preprocessing)
    seed_everything(ctx.seed)
    model = ASTForMaskedSpectrogram(ast_config(data.preprocessing, cfg.model))
    return _train(cfg, ctx, model, data, task, [task.features("train")] if task else [])


def adapt(cfg, parent, ctx) -> tuple[dict, dict]:
    """The adapt stage's masked-spectrogram objective: the parent's (or `model.path`'s) pre-trained AST
    continued on the stage's clips, read through the model's own preprocessing."""
    import json
    from pathlib import Path

    from lifecycle import LifecycleError
    from lifecycle.components.classification import seed_everything
    from lifecycle.edge import FEATURE_EXTRACTOR

    start = Path(ctx.pipeline.resolve(cfg.model.path)) if cfg.model is not None and cfg.model.path else Path(parent.path)
    if not (start / FEATURE_EXTRACTOR).is_file():
        raise LifecycleError(f"{start}: not an audio model (no {FEATURE_EXTRACTOR}); adapt a masked-spectrogram "
                             "pretrain stage's model")
    preprocessing = json.loads((start / FEATURE_EXTRACTOR).read_text())
    data = ctx.data(cfg.data).read_through(preprocessing, cfg.data)
    seed_everything(ctx.seed)
    model = ASTForMaskedSpectrogram.from_pretrained(start)
    return _train(cfg, ctx, model, data, _task(ctx, preprocessing))
