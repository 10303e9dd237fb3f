"""pretrain: a language model from scratch on an unlabelled corpus.

bert-* presets train an encoder with masked-LM, gpt-* presets a decoder with causal-LM. A tokenizer
(WordPiece / byte-level BPE) is trained on the training split, the corpus is packed into fixed-length
blocks, and the transformers Trainer does the rest: gradient accumulation, warm-up + decay,
precision, gradient checkpointing, periodic evaluation, checkpoints in the scratch directory and
automatic resume after a crash, DDP under `torchrun`. The `adapt` stage reuses the functions below
(continued pre-training is this loop with an initial checkpoint, not a second copy).

Masked-LM computes the vocabulary projection only at the masked positions (~15% of tokens). For small
encoders that projection dominates the cost, so this is ~2x faster, with the same weights and the
same checkpoint format (the artifact is saved as a plain BertForMaskedLM).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Literal

from pydantic import Field, model_validator

from lifecycle.contrastive import CONTRASTIVE_METRICS, Contrastive
from lifecycle.data.corpus import STAT_KEYS
from lifecycle.evaluation.probe import Probe
from lifecycle.models import PRESETS, ModelSource
from lifecycle.schema import StageBase, unset
from lifecycle.training import TrainConfig

LM_METRICS = {"eval_loss", "perplexity", "train_loss", "tokens_per_second", "train_seconds", "train_tokens",
              "params_total", "vocab_size", "world_size", "data_wait_fraction", *STAT_KEYS}


class Config(StageBase):
    kind: Literal["pretrain"]
    consumes = None
    produces = "hf-model"
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    data: str = Field(description="name of the corpus source in `data` (its labels, if any, are ignored)")
    model: ModelSource = ModelSource(preset="bert-tiny")  # a preset: bert-* -> masked-LM, gpt-* -> causal-LM
    block_size: int = Field(128, ge=8)  # tokens per packed block: longer = more context, quadratic attention cost
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # masked-LM only
    train: TrainConfig = TrainConfig(lr=5e-4, epochs=1)  # from scratch: a higher lr than fine-tuning
    probe: Probe | None = None  # a labelled task scored on frozen features after training: probe_accuracy
    num_proc: int | None = Field(None, gt=0, description="tokenization workers; pays off above ~10 MB of text")
    # None: masked-LM for bert-* presets, causal-LM for gpt-*. contrastive: sentence embeddings
    # (lifecycle.contrastive; settings in `contrastive:`), encoders only.
    objective: Literal["mlm", "clm", "contrastive"] | None = Field(None, exclude_if=unset)
    contrastive: Contrastive | None = Field(None, exclude_if=unset)

    @model_validator(mode="after")
    def _from_scratch(self) -> Config:
        if not self.model.preset:
            raise ValueError("model: pretrain starts from a preset; to continue from existing weights use an "
                             "`adapt` stage with `model: {path: ...}` or `model: {package: ...}`")
        natural = "mlm" if self.model.family == "bert" else "clm"
        if self.objective not in (None, natural) and not (self.objective == "contrastive" and natural == "mlm"):
            raise ValueError(f"objective: '{self.objective}' does not fit preset {self.model.preset} "
                             f"({'encoder: mlm or contrastive' if natural == 'mlm' else 'decoder: clm'})")
        if self.contrastive is not None and self.objective != "contrastive":
            raise ValueError("contrastive: settings for `objective: contrastive` only")
        fields = {**PRESETS[self.model.preset](), **self.model.overrides}
        positions = fields.get("max_position_embeddings", fields.get("n_positions"))
        if positions and self.block_size > positions:
            raise ValueError(f"block_size: {self.block_size} tokens exceed the model's {positions} positions")
        return self

    def metric_names(self) -> set[str]:
        if self.objective == "contrastive":
            return {*CONTRASTIVE_METRICS, *STAT_KEYS, "vocab_size"}
        return {*LM_METRICS, "unigram_perplexity", "perplexity_vs_unigram", "probe_accuracy"}


def run(cfg: Config, parent, ctx) -> dict:
    from transformers import set_seed

    from lifecycle import models
    from lifecycle.data.corpus import load_corpus
    from lifecycle.evaluation.perplexity import unigram_perplexity

    if cfg.objective == "contrastive":
        return _contrastive(cfg, ctx)
    objective = "mlm" if cfg.model.family == "bert" else "clm"
    args = lm_training_args(cfg.train, ctx)
    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    with args.main_process_first(desc="train tokenizer"):
        tokenizer = _tokenizer(cfg, corpus, ctx)
    blocks, eval_blocks = lm_blocks(corpus, tokenizer, cfg.block_size, objective, cfg.mlm_probability, ctx, args,
                                    cfg.num_proc)
    set_seed(ctx.seed)
    config = models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = new_model(config, objective)
    trainer = lm_trainer(model, tokenizer, objective, blocks, eval_blocks, args, cfg.mlm_probability)
    if cfg.probe and cfg.probe.every_eval:
        from lifecycle.evaluation.probe import transfer_callback

        trainer.add_callback(transfer_callback(cfg.probe, tokenizer, ctx))
    metrics = fit(trainer, ctx, cfg.block_size)
    metrics.update(corpus.stats, vocab_size=len(tokenizer), params_total=models.count_parameters(model)["params_total"])
    metrics["unigram_perplexity"] = unigram_perplexity(blocks, eval_blocks, objective, len(tokenizer),
                                                       tokenizer.all_special_ids)
    # below 1 = the model beats word frequencies on the same targets; a gate can bound it
    metrics["perplexity_vs_unigram"] = metrics["perplexity"] / metrics["unigram_perplexity"]
    ctx.details.update(objective=objective, block_size=cfg.block_size, data=corpus.stats)
    return finish(trainer, tokenizer, cfg.probe, ctx, metrics)


def _contrastive(cfg: Config, ctx) -> dict:
    """An encoder from scratch trained only with the contrastive objective (lifecycle.contrastive)."""
    from transformers import AutoModel, set_seed

    from lifecycle import contrastive, models
    from lifecycle.data.corpus import load_corpus
    from lifecycle.embedding import Pooling

    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    tokenizer = _tokenizer(cfg, corpus, ctx)
    set_seed(ctx.seed)
    model = AutoModel.from_config(models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    metrics = contrastive.train(cfg, model, tokenizer, Pooling(), ctx, corpus)
    return {**metrics, **corpus.stats, "vocab_size": len(tokenizer)}


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


# --------------------------------------------------------------------- shared with the adapt stage
def lm_training_args(train: TrainConfig, ctx, **extra):
    from lifecycle import training

    # Only the loss is needed at evaluation; keeping logits of a 30k vocabulary would cost memory for nothing.
    # The block datasets hold model inputs only, so the Trainer need not drop columns.
    return training.training_args(train, ctx.scratch_dir / "checkpoints", ctx.seed, prediction_loss_only=True,
                                  remove_unused_columns=False, **extra)


def lm_blocks(corpus, tokenizer, block_size: int, objective: str, mlm_probability: float, ctx, args, num_proc=None):
    """Packed training blocks and a validation set with fixed masks; tokenized once per content
    (cache under the run directory), by the main process first under DDP."""
    from lifecycle.data.corpus import mask_for_eval, tokenize_and_pack

    with args.main_process_first(desc="tokenize corpus"):
        packed = tokenize_and_pack(corpus.splits, tokenizer, block_size, objective, ctx.run_dir / ".cache" / "corpus",
                                   num_proc)
    val = packed["validation"]
    if objective == "mlm":
        val = mask_for_eval(val, tokenizer, mlm_probability, ctx.seed)
    return packed["train"], val


def new_model(config, objective: str):
    from transformers import AutoModelForCausalLM

    if objective == "mlm":
        return sparse_mlm_class()(config)
    return AutoModelForCausalLM.from_config(config)


@functools.cache
def sparse_mlm_class():
    """BertForMaskedLM whose training loss projects only the masked positions onto the vocabulary.
    Without labels it is exactly BertForMaskedLM (full logits)."""
    import torch.nn.functional as F
    from transformers import BertForMaskedLM
    from transformers.modeling_outputs import MaskedLMOutput

    class SparseBertForMaskedLM(BertForMaskedLM):
        accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: exact means under grad accumulation

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                    num_items_in_batch=None, **kwargs):
            if labels is None:
                return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
            hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids).last_hidden_state
            masked = labels != -100
            logits = self.cls(hidden[masked])
            loss = F.cross_entropy(logits.float(), labels[masked], reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else masked.sum().clamp(min=1))
            return MaskedLMOutput(loss=loss, logits=logits)

    return SparseBertForMaskedLM


def plain_model(model):
    """The artifact holds a stock class (BertForMaskedLM), whatever ran the training loss."""
    if type(model) is not sparse_mlm_class():
        return model
    from transformers import BertForMaskedLM

    plain = BertForMaskedLM(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


def lm_trainer(model, tokenizer, objective: str, blocks, eval_blocks, args, mlm_probability: float = 0.15):
    from transformers import Trainer, default_data_collator

    from lifecycle.data.corpus import MaskedLMCollator

    # Validation examples come with fixed masks (labels); training blocks are masked as they are batched.
    collate = MaskedLMCollator(tokenizer, mlm_probability, args.seed) if objective == "mlm" else default_data_collator
    return Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=eval_blocks, data_collator=collate)


def finish(trainer, tokenizer, probe, ctx, metrics: dict) -> dict:
    """Probe and save on the main process only: under torchrun, one process writes the artifact."""
    from lifecycle import models

    if trainer.is_world_process_zero():
        if probe:
            from lifecycle.evaluation.probe import probe_accuracy

            task = ctx.data(probe.data)
            metrics.update(probe_accuracy(trainer.model, tokenizer, task, probe, ctx.seed))
        models.save(plain_model(trainer.model), tokenizer, ctx.out_dir)
    return metrics


def fit(trainer, ctx, block_size: int) -> dict:
    """Train (resuming from the last complete checkpoint if a previous run crashed), evaluate, and measure."""
    from lifecycle import training
    from lifecycle.evaluation.perplexity import perplexity

    checkpoints = ctx.scratch_dir / "checkpoints"
    last = training.last_checkpoint(checkpoints)  # the one training.train resumes from
    first_step = int(last.name.rsplit("-", 1)[1]) if last else 0
    started = time.perf_counter()
    training.train(trainer, checkpoints, ctx)
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    # tokens/s counts training only: evaluations inside train() are timed by the Trainer and taken out.
    eval_seconds = sum(r.get("eval_runtime", 0.0) for r in history if r.get("step", 0) > first_step)
    args = trainer.args
    tokens = (trainer.state.global_step - first_step) * args.per_device_train_batch_size \
        * args.gradient_accumulation_steps * args.world_size * block_size
    final = trainer.evaluate()
    for row in history:
        if "eval_loss" in row:
            row["eval_perplexity"] = perplexity(row["eval_loss"])
    ctx.details["log_history"] = training.log_history(trainer)
    ctx.details["resumed_from_step"] = first_step
    train_losses = [r["loss"] for r in history if "loss" in r]
    seconds = max(wall - eval_seconds, 1e-9)
    return {"eval_loss": final["eval_loss"], "perplexity": perplexity(final["eval_loss"]),
            "train_loss": train_losses[-1] if train_losses else math.nan, "train_tokens": tokens,
            "train_seconds": seconds, "tokens_per_second": tokens / seconds, "world_size": args.world_size}

