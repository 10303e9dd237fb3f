"""The finetune recipe for text classification (the `classification` task): the transformers Trainer,
full or LoRA (peft), the best checkpoint on validation kept, LoRA merged before the artifact is written
(the adapter kept beside it in `adapter/`, with `lora_merge_max_abs_diff` checking the merge), the test
split scored with the collapse metrics, the from-scratch control and the TF-IDF baseline when asked.
The pieces distill shares are in lifecycle.components.classification and .training."""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation import CLASSIFICATION


def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    import time

    from lifecycle import models
    from lifecycle.components.classification import (
        collapse_metrics,
        collapse_warning,
        encode,
        label_space,
        load_classifier,
    )
    from lifecycle.components.inference import logits_of
    from lifecycle.evaluation import score_test
    from lifecycle.evaluation.latency import torch_latency

    task = ctx.pipeline.task
    data = ctx.task_data()
    labels = label_space(data, cfg.multi_label)
    source = cfg.model or Path(parent.path)
    loaded = load_classifier(source, ctx, data, labels, multi_label=cfg.multi_label is not None,
                             pooling=cfg.head_pooling)
    model, tokenizer = loaded.model, loaded.tokenizer
    details = loaded.details()
    if cfg.lora:
        model, details["trained_in_full"] = with_lora(model, cfg.lora, loaded.newly_initialised or [])
    counts = models.count_parameters(model)
    splits = encode(data, tokenizer, task.max_length, labels, cfg.validation_limit, ctx.seed)
    started = time.time()
    trainer, val, metrics, fitted = fit(model, splits, tokenizer, labels, cfg, cfg.train,
                                       ctx.scratch_dir / "checkpoints", ctx.seed, ctx)
    train_seconds = time.time() - started
    details.update(fitted, best_checkpoint=trainer.state.best_model_checkpoint,
                   best_metric=trainer.state.best_metric, labels=labels.names)
    if not trainer.is_world_process_zero():
        return {}, details  # under torchrun only rank 0's artifact is kept: saving and testing are its job

    if cfg.lora:
        model.save_pretrained(ctx.out_dir / "adapter", safe_serialization=True)
        probe = data.splits["validation"]["text"][:32]
        before = logits_of(model, tokenizer, probe, task.max_length)
        model = model.merge_and_unload()
        after = logits_of(model, tokenizer, probe, task.max_length)
        metrics["lora_merge_max_abs_diff"] = float(abs(before - after).max())
    else:
        model = trainer.model
    models.save(model, tokenizer, ctx.out_dir)

    texts, test = data.splits["test"]["text"], splits["test"]
    test_logits = logits_of(model, tokenizer, texts, task.max_length)
    metrics.update(score_test(test_logits, test["labels"], texts, ctx.out_dir, labels.threshold if labels.multi else None))
    if not labels.multi:
        metrics.update(collapse_metrics(test_logits, test["labels"], len(labels.names)))
        warning = collapse_warning(metrics, cfg.collapse_min, lora=cfg.lora is not None, lr=cfg.train.lr)
        if warning:
            details["collapse_warning"] = warning
            ctx.echo(f"   warning: {warning}")
    metrics.update(torch_latency(model, tokenizer, data.splits["test"]["text"][0], cfg.latency, task.max_length))
    metrics.update(counts, trainable_fraction=counts["params_trainable"] / counts["params_total"],
                   **{f"val_{m}": val[f"eval_{m}"] for m in CLASSIFICATION}, eval_loss=val["eval_loss"],
                   size_mb=models.size_mb(ctx.out_dir / "model.safetensors"), train_seconds=train_seconds,
                   train_steps=trainer.state.global_step)
    if cfg.control is not None:
        metrics.update(control(model.config, tokenizer, splits, data, labels, cfg, ctx))
        metrics["pretraining_gain"] = metrics[cfg.metric] - metrics[f"control_{cfg.metric}"]
    if cfg.baseline:
        from lifecycle.workloads.text.baseline import tfidf_logreg

        metrics.update(tfidf_logreg(data, ctx.seed))
    return metrics, details


def fit(model, splits, tokenizer, labels, cfg, train, checkpoints: Path, seed: int, ctx=None,
        echo=None):
    """Train with the Trainer (resuming after a crash); returns the trainer, the validation metrics of the
    best checkpoint (which the Trainer reloads at the end of training), and the metrics and manifest details
    the stage reports of the training. Without `ctx` (the control) progress goes to `echo`."""
    from lifecycle.components import classification as cls
    from lifecycle.components import training

    weights = cls.class_weights(cfg.class_weights, splits["train"]["labels"], labels)
    metrics, details = {}, {}
    if weights is not None:
        details["class_weights"] = dict(zip(labels.names, weights))
    trainer = cls.classifier_trainer(
        cls.classification_loss(weights, labels.multi), model=model,
        args=training.best_checkpoint_args(train, checkpoints, seed, cfg.metric), train_dataset=splits["train"],
        eval_dataset=splits["validation"], data_collator=cls.collator(tokenizer),
        compute_metrics=lambda p: cls.score(p.predictions, p.label_ids, labels),
        callbacks=training.callbacks(cfg.early_stopping))
    measured = training.train(trainer, checkpoints, ctx, echo=echo)
    if measured is not None:
        metrics["data_wait_fraction"] = measured.data_wait_fraction
        details["log_history"] = measured.log_history
    return trainer, trainer.evaluate(), metrics, details


def control(config, tokenizer, splits, data, labels, cfg, ctx) -> dict:
    """The fine-tuned model's architecture and tokenizer from random initialisation, same data and seed."""
    from transformers import AutoModelForSequenceClassification

    from lifecycle.components.classification import score, seed_everything
    from lifecycle.components.inference import logits_of
    from lifecycle.embedding import apply_head_pooling

    seed_everything(ctx.seed)
    model = apply_head_pooling(AutoModelForSequenceClassification.from_config(config))
    # its own checkpoints, so a crash resumes the control without touching the main run's
    trainer, *_ = fit(model, splits, tokenizer, labels, cfg, cfg.control.train or cfg.train,
                     ctx.scratch_dir / "control-checkpoints", ctx.seed, echo=ctx.echo)
    logits = logits_of(trainer.model, tokenizer, data.splits["test"]["text"], ctx.pipeline.task.max_length)
    return {f"control_{k}": v for k, v in score(logits, splits["test"]["labels"], labels).items()}


def with_lora(model, lora, newly_initialised: list[str]) -> tuple[object, list[str]]:
    """The model wrapped with LoRA adapters, and the modules trained in full: everything on the head's path.

    SEQ_CLS makes peft train (and save) the new classification head in full beside the adapter. The
    pooler the head reads (BERT-style models) is trained in full too: its dense + tanh were never trained
    on the states this task needs (random after masked-LM pre-training, unused by a sentence encoder
    trained for mean pooling), and a frozen one starves the head (LoRA collapsing to the majority class).
    Other weights the checkpoint lacks are trained in full for the same reason.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    from lifecycle.embedding import pooler_path

    pooler = pooler_path(model)
    head = [pooler] if pooler else []
    fresh = {key.rsplit(".", 1)[0] for key in newly_initialised
             if not key.startswith(("classifier.", "score."))}
    fresh = sorted({m for m in fresh if not any(m == h or m.startswith(h + ".") for h in head)} | set(head))
    # LoRA must not also wrap Linear layers inside a module trained in full (a `dense` target would).
    inner = sorted({f"{m}.{name}" for m in fresh for name, mod in model.get_submodule(m).named_modules()
                    if name and type(mod).__name__ == "Linear"})
    # (copies: peft appends its SEQ_CLS head names to the modules_to_save list it is given)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                             lora_dropout=lora.dropout, target_modules=lora.target_modules,
                                             modules_to_save=list(fresh) or None,
                                             exclude_modules=[*fresh, *inner] or None))
    return model, fresh
