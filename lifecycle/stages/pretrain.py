"""pretrain: a language model from scratch on an unlabelled corpus.

bert-* presets train an encoder with masked-LM, gpt-* presets a decoder with causal-LM. A tokenizer
(WordPiece / byte-level BPE) is trained on the training split, the corpus is packed into fixed-length
blocks, and the transformers Trainer does the rest: gradient accumulation, warm-up + decay,
precision, gradient checkpointing, periodic evaluation, checkpoints in the scratch directory and
automatic resume after a crash, DDP under `torchrun`. The loop lives in
`lifecycle.components.language_model`, which the `adapt` stage shares (continued pre-training is
this loop with an initial checkpoint, not a second copy).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lifecycle.components.language_model import LM_METRICS
from lifecycle.components.probe import Probe
from lifecycle.components.training import TrainConfig
from lifecycle.contrastive import CONTRASTIVE_METRICS, Contrastive, image_problem
from lifecycle.data.corpus import STAT_KEYS
from lifecycle.evaluation.images import IMAGE_CONTRASTIVE_METRICS, MASKED_IMAGE_METRICS
from lifecycle.evaluation.tables import MASKED_FEATURE_METRICS, SCARF_METRICS
from lifecycle.models import PRESETS, ModelSource
from lifecycle.schema import Holds, StageBase, TaskType, Trains, unset


class Config(StageBase):
    kind: Literal["pretrain"]
    reads_parent = False
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    data: str = Field(description="name of the corpus source in `data` (its labels, if any, are ignored)")
    model: ModelSource = ModelSource(preset="bert-tiny")  # a preset: bert-* -> masked-LM, gpt-* -> causal-LM
    block_size: int = Field(128, ge=8)  # tokens per packed block: longer = more context, quadratic attention cost
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # masked-LM only
    train: TrainConfig = TrainConfig(lr=5e-4, epochs=1)  # from scratch: a higher lr than fine-tuning
    probe: Probe | None = None  # a labelled task scored on frozen features after training: probe_accuracy
    num_proc: int | None = Field(None, gt=0, description="tokenization workers; pays off above ~10 MB of text")
    # None: masked-LM for bert-* presets, causal-LM for gpt-*. contrastive: sentence embeddings
    # (lifecycle.contrastive; settings in `contrastive:`), encoders only. masked-feature: a table model
    # on a table source (lifecycle.masked_features; `mlm_probability` is the share of cells masked).
    # masked-image: a vision transformer on an image source (lifecycle.masked_images, SimMIM;
    # `mlm_probability` is the share of patches masked). contrastive on an image source: SimCLR on two
    # augmented views (lifecycle.image_contrastive; `contrastive.temperature` only).
    objective: Literal["mlm", "clm", "contrastive", "masked-feature", "masked-image"] | None = Field(
        None, exclude_if=unset)
    contrastive: Contrastive | None = Field(None, exclude_if=unset)

    @model_validator(mode="after")
    def _from_scratch(self) -> Config:
        if not self.model.preset:
            raise ValueError("model: pretrain starts from a preset; to continue from existing weights use an "
                             "`adapt` stage with `model: {path: ...}` or `model: {package: ...}`")
        natural = "mlm" if self.model.family == "bert" else "clm"
        encoder_only = ("contrastive", "masked-feature", "masked-image")
        if self.objective not in (None, natural) and not (self.objective in encoder_only and natural == "mlm"):
            raise ValueError(f"objective: '{self.objective}' does not fit preset {self.model.preset} "
                             f"({'encoder: mlm, contrastive, masked-feature or masked-image' if natural == 'mlm' else 'decoder: clm'})")
        if self.contrastive is not None and self.objective != "contrastive":
            raise ValueError("contrastive: settings for `objective: contrastive` only")
        fields = {**PRESETS[self.model.preset](), **self.model.overrides}
        positions = fields.get("max_position_embeddings", fields.get("n_positions"))
        if positions and self.block_size > positions:
            raise ValueError(f"block_size: {self.block_size} tokens exceed the model's {positions} positions")
        return self

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, data=self.data, seq=self.block_size,
                      masked_fraction=self.mlm_probability)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return ()

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        if self.objective == "contrastive":
            return "encoder"
        return "masked-lm" if self.objective in ("masked-feature", "masked-image") or self.model.family == "bert" else "causal-lm"

    def data_refs(self) -> dict[str, tuple[str, bool]]:
        return {"data": (self.data, False), **({"probe.data": (self.probe.data, True)} if self.probe else {})}

    def source_problem(self, sources: dict) -> str | None:
        return image_problem(self, ("block_size", "mlm_probability", "num_proc", "probe"), sources["data"])

    def files(self) -> dict[str, str]:
        pairs = self.contrastive.pairs if self.contrastive else None
        return {"contrastive.pairs.path": pairs.path} if pairs else {}

    def metric_names(self) -> set[str]:
        if self.objective == "masked-feature":
            return set(MASKED_FEATURE_METRICS)
        if self.objective == "masked-image":
            return set(MASKED_IMAGE_METRICS)
        if self.objective == "contrastive":
            return {*CONTRASTIVE_METRICS, *STAT_KEYS, "vocab_size", *SCARF_METRICS,  # text, a table or images
                    *IMAGE_CONTRASTIVE_METRICS}
        return {*LM_METRICS, "unigram_perplexity", "perplexity_vs_unigram", "probe_accuracy"}


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    from transformers import set_seed

    from lifecycle import models
    from lifecycle.components import language_model as lm
    from lifecycle.data.corpus import load_corpus

    if cfg.objective == "masked-feature":
        from lifecycle import masked_features

        return masked_features.pretrain(cfg, ctx)
    if cfg.objective == "masked-image":
        from lifecycle import masked_images

        return masked_images.pretrain(cfg, ctx)
    if ctx.pipeline.data[cfg.data].reads == "image":
        if cfg.objective == "contrastive":
            from lifecycle import image_contrastive

            return image_contrastive.pretrain(cfg, ctx)
        from lifecycle import LifecycleError

        raise LifecycleError(f"pretrain: data '{cfg.data}' holds images; pre-train an image model with "
                             "`objective: masked-image` or `objective: contrastive`")
    if ctx.pipeline.data[cfg.data].table is not None:
        if cfg.objective == "contrastive":
            from lifecycle import table_contrastive

            return table_contrastive.pretrain(cfg, ctx)
        from lifecycle import LifecycleError

        raise LifecycleError(f"pretrain: data '{cfg.data}' is a table; pre-train a table model with "
                             "`objective: masked-feature` or `objective: contrastive`")
    if cfg.objective == "contrastive":
        return _contrastive(cfg, ctx)
    objective = "mlm" if cfg.model.family == "bert" else "clm"
    args = lm.lm_training_args(cfg.train, ctx)
    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    with args.main_process_first(desc="train tokenizer"):
        tokenizer = _tokenizer(cfg, corpus, ctx)
    blocks, eval_blocks = lm.lm_blocks(corpus, tokenizer, cfg.block_size, objective, cfg.mlm_probability, ctx, args,
                                       cfg.num_proc)
    set_seed(ctx.seed)
    config = models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = lm.new_model(config, objective)
    trainer = lm.lm_trainer(model, tokenizer, objective, blocks, eval_blocks, args, cfg.mlm_probability)
    details = {}
    if cfg.probe and cfg.probe.every_eval:
        from lifecycle.components.language_model import transfer_callback

        callback, details["transfer"] = transfer_callback(cfg.probe, tokenizer, ctx.data(cfg.probe.data),
                                                          ctx.stage.label)
        trainer.add_callback(callback)
    metrics, fitted = lm.fit(trainer, ctx, cfg.block_size)
    metrics.update(corpus.stats, vocab_size=len(tokenizer), params_total=models.count_parameters(model)["params_total"])
    metrics["unigram_perplexity"] = lm.unigram_perplexity(blocks, eval_blocks, objective, len(tokenizer),
                                                          tokenizer.all_special_ids)
    # below 1 = the model beats word frequencies on the same targets; a gate can bound it
    metrics["perplexity_vs_unigram"] = metrics["perplexity"] / metrics["unigram_perplexity"]
    details.update(fitted, objective=objective, block_size=cfg.block_size, data=corpus.stats)
    return lm.finish(trainer, tokenizer, cfg.probe, ctx, metrics), details


def _contrastive(cfg: Config, ctx) -> tuple[dict, dict]:
    """An encoder from scratch trained only with the contrastive objective (lifecycle.contrastive)."""
    from transformers import AutoModel, set_seed

    from lifecycle import contrastive, models
    from lifecycle.data.corpus import load_corpus
    from lifecycle.embedding import Pooling

    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    tokenizer = _tokenizer(cfg, corpus, ctx)
    set_seed(ctx.seed)
    model = AutoModel.from_config(models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    metrics, details = contrastive.train(cfg, model, tokenizer, Pooling(), ctx, corpus)
    return {**metrics, **corpus.stats, "vocab_size": len(tokenizer)}, details


def _tokenizer(cfg: Config, corpus, ctx):
    """Trained on the training split, kept in scratch: a resumed run (and every DDP rank) uses the very
    same vocabulary as the checkpoint it continues."""
    from lifecycle import models

    saved = ctx.scratch_dir / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        return models.load_tokenizer(saved, cfg.block_size)
    tokenizer = models.train_tokenizer(corpus.splits["train"]["text"], cfg.model.tokenizer, cfg.model.family,
                                       cfg.block_size)
    tokenizer.save_pretrained(saved)
    return tokenizer
