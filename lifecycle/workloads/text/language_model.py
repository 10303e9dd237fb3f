"""Language-model recipes on text: pretrain (a masked-LM or causal-LM from scratch, its tokenizer trained on
the corpus) and adapt (continued pre-training, measured before and after). The loop is
lifecycle.components.language_model's: the Trainer with gradient accumulation, warm-up, checkpoints in
scratch and resume after a crash, DDP under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle import ConfigError, quiet
from lifecycle.components.checkpoints import last_checkpoint
from lifecycle.components.training import TrainConfig


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """A masked-LM (bert-* presets) or causal-LM (gpt-*) from scratch, with a tokenizer trained on the corpus."""
    from transformers import set_seed

    from lifecycle import models
    from lifecycle.components import language_model as lm
    from lifecycle.data.corpus import load_corpus

    objective = "mlm" if cfg.model.family == "bert" else "clm"
    args = lm.lm_training_args(cfg.train, ctx)
    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    with args.main_process_first(desc="train tokenizer"):
        tokenizer = tokenizer_for(cfg, corpus, ctx)
    blocks, eval_blocks = lm.lm_blocks(corpus, tokenizer, cfg.block_size, objective, cfg.mlm_probability, ctx, args,
                                       cfg.num_proc)
    set_seed(ctx.seed)
    config = models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = lm.new_model(config, objective)
    trainer = lm.lm_trainer(model, tokenizer, objective, blocks, eval_blocks, args, cfg.mlm_probability)
    details = probe_every_eval(cfg, trainer, tokenizer, ctx)
    metrics, fitted = lm.fit(trainer, ctx, cfg.block_size)
    metrics.update(corpus.stats, vocab_size=len(tokenizer), params_total=models.count_parameters(model)["params_total"])
    metrics["unigram_perplexity"] = lm.unigram_perplexity(blocks, eval_blocks, objective, len(tokenizer),
                                                          tokenizer.all_special_ids)
    # below 1 = the model beats word frequencies on the same targets; a gate can bound it
    metrics["perplexity_vs_unigram"] = metrics["perplexity"] / metrics["unigram_perplexity"]
    details.update(fitted, objective=objective, block_size=cfg.block_size, data=corpus.stats)
    return lm.finish(trainer, tokenizer, cfg.probe, ctx, metrics), details




def tokenizer_for(cfg, corpus, ctx):
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


def adapt(cfg, parent, ctx) -> tuple[dict, dict]:
    """Continued masked-LM or causal-LM pre-training of the parent (or `model:`) on a domain corpus,
    measured before and after on the domain and general corpora (see lifecycle.stages.adapt)."""
    from transformers import set_seed

    from lifecycle import models
    from lifecycle.components import language_model as lm
    from lifecycle.components import training
    from lifecycle.data.corpus import load_corpus

    path = models.model_dir(cfg.model, ctx.pipeline) if cfg.model is not None else Path(parent.path)
    tokenizer = models.load_tokenizer(path, cfg.block_size)
    set_seed(ctx.seed)
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
    # The stage's one bar now, so the evaluations before training open no unnamed bar of their own (the
    # Trainer's default); their losses are in the stage's table as perplexity_before.
    training.one_progress_bar(trainer, ctx.stage.label)
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

    details = probe_every_eval(cfg, trainer, tokenizer, ctx)
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


def _warm_up_head(cfg, trainer, blocks, ctx) -> None:
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


def probe_every_eval(cfg, trainer, tokenizer, ctx) -> dict:
    """With `probe.every_eval`, the probe scored at every evaluation (the transfer curve); the details it keeps."""
    if not (cfg.probe and cfg.probe.every_eval):
        return {}
    from lifecycle.components.language_model import transfer_callback

    callback, transfer = transfer_callback(cfg.probe, tokenizer, ctx.data(cfg.probe.data), ctx.stage.label)
    trainer.add_callback(callback)
    return {"transfer": transfer}
