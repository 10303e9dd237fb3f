"""finetune: text classification with the transformers Trainer, full or LoRA (peft).

LoRA is merged into the base weights before the artifact is written, so every later stage (distill,
export) sees a plain model; the adapter is kept beside it in `adapter/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import LATENCY_METRICS
from lifecycle.models import ModelSource
from lifecycle.schema import StageBase, Strict
from lifecycle.training import TrainConfig


class LoRA(Strict):
    r: int = Field(8, gt=0)  # rank: higher fits more, costs more trainable parameters
    alpha: int = Field(16, gt=0)  # scale = alpha / r
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: peft's default for the architecture (query, value)


class Latency(Strict):
    batch_size: int = Field(1, gt=0)
    seq_len: int | None = Field(None, gt=0, description="None: the task's max_length")
    runs: int = Field(20, gt=0)
    warmup: int = Field(3, ge=0)


class Config(StageBase):
    kind: Literal["finetune"]
    consumes = "hf-model"
    model: ModelSource | None = None  # start from here instead of the parent stage's artifact
    train: TrainConfig = TrainConfig()
    lora: LoRA | None = None  # None: full fine-tuning
    latency: Latency = Latency()

    def needs_parent(self) -> bool:
        return self.model is None

    def metric_names(self) -> set[str]:
        return {*CLASSIFICATION, *LATENCY_METRICS, "val_accuracy", "eval_loss", "params_total", "params_trainable",
                "trainable_fraction", "size_mb", "train_seconds"}


def run(cfg: Config, parent, ctx) -> dict:
    import time

    from transformers import DataCollatorWithPadding, Trainer

    from lifecycle import models, training
    from lifecycle.evaluation import classification_metrics

    task = ctx.pipeline.task
    data = ctx.task_data()
    model, tokenizer = _initial_model(cfg, parent, ctx, data)
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules))
    counts = models.count_parameters(model)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=task.max_length)

    tokenized = data.splits.map(tokenize, batched=True, remove_columns=["text"], desc="tokenize")

    def compute(eval_pred):
        logits, labels = eval_pred
        return classification_metrics(logits.argmax(-1), labels)

    checkpoints = ctx.scratch_dir / "checkpoints"
    args = training.training_args(cfg.train, checkpoints, ctx.seed, metric_for_best_model="accuracy",
                                  load_best_model_at_end=False)
    trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute)
    started = time.time()
    training.train(trainer, checkpoints)
    train_seconds = time.time() - started
    val = trainer.evaluate()
    ctx.details["log_history"] = training.log_history(trainer)

    if cfg.lora:
        model.save_pretrained(ctx.out_dir / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    model = trainer.model if not cfg.lora else model
    models.save(model, tokenizer, ctx.out_dir)

    test = data.splits["test"]
    logits = training.predict_logits(model, tokenizer, test["text"], task.max_length)
    metrics = classification_metrics(logits.argmax(-1), test["label"])
    seq = cfg.latency.seq_len or task.max_length
    metrics.update(training.torch_latency(model, tokenizer, test["text"][0], cfg.latency.batch_size, seq,
                                          cfg.latency.runs, cfg.latency.warmup))
    metrics.update(counts, trainable_fraction=counts["params_trainable"] / counts["params_total"],
                   val_accuracy=val.get("eval_accuracy"), eval_loss=val.get("eval_loss"),
                   size_mb=models.size_mb(ctx.out_dir / "model.safetensors"), train_seconds=train_seconds)
    return metrics


def _initial_model(cfg: Config, parent, ctx, data):
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models

    labels = {"num_labels": data.num_labels, "id2label": dict(enumerate(data.labels)),
              "label2id": {name: i for i, name in enumerate(data.labels)}}
    max_length = ctx.pipeline.task.max_length
    if cfg.model is not None and cfg.model.preset:
        tokenizer = models.train_tokenizer(data.splits["train"]["text"], cfg.model.tokenizer, cfg.model.family, max_length)
        config = models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id, **labels)
        _seed(ctx.seed)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    path = models.model_dir(cfg.model, ctx.pipeline) if cfg.model is not None else Path(parent.path)
    tokenizer = models.load_tokenizer(path, max_length)
    _seed(ctx.seed)
    # A new classification head is expected here (the parent is an encoder or a different task).
    model = models.load_model(AutoModelForSequenceClassification, path, ignore_mismatched_sizes=True, **labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
