"""Pieces every training stage shares: the training config, Trainer arguments, crash-resume, and
PyTorch inference for metrics and latency. Plain functions, no base class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle.schema import Strict


class TrainConfig(Strict):
    """Trainer settings shared by pretrain, adapt, finetune and distill."""

    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0; the budget for quick runs")
    batch_size: int = Field(16, gt=0)  # per device; larger batches are faster per sample on CPU up to ~32
    grad_accum: int = Field(1, gt=0)  # effective batch = batch_size x grad_accum x devices
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPUs that have it, else fp32
    gradient_checkpointing: bool = False  # trades ~30% more compute for activation memory
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N steps; None: once per epoch")
    save_steps: int = Field(200, gt=0)  # checkpoint cadence: the most work a crash can lose
    logging_steps: int = Field(10, gt=0)
    max_grad_norm: float = 1.0


def training_args(cfg: TrainConfig, output_dir: Path, seed: int, **extra):
    import torch
    from transformers import TrainingArguments

    bf16 = fp16 = False
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        bf16 = True
    elif cfg.precision == "fp16":
        fp16 = True
    strategy = "steps" if cfg.eval_steps else "epoch"
    args = dict(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 32),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.scheduler,
        bf16=bf16,
        fp16=fp16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        save_safetensors=True,
        logging_steps=cfg.logging_steps,
        max_grad_norm=cfg.max_grad_norm,
        seed=seed,
        data_seed=seed,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        # DDP on CPU (gloo) and single-process runs alike; unused-parameter search costs time.
        ddp_find_unused_parameters=False,
    )
    args.update(extra)
    return TrainingArguments(**args)


def train(trainer, checkpoint_dir: Path, ctx=None):
    """Train, resuming from the newest checkpoint in checkpoint_dir when a previous run crashed.

    With the stage context: per-step metrics go to <run>/metrics/<stage>.jsonl as they are logged,
    time spent waiting for data is measured (`data_wait_fraction`), the Trainer's log history goes
    into the manifest (for the loss plots), and an active MLflow run gets a nested run for the stage.
    """
    import time

    from transformers.trainer_utils import get_last_checkpoint

    from lifecycle import tracking

    counters = None
    if ctx is not None:
        trainer.add_callback(tracking.step_logger(ctx.run_dir / "metrics" / f"{ctx.stage.label}.jsonl"))
        counters = tracking.time_data_wait(trainer)
        if tracking.mlflow_active():
            trainer.add_callback(tracking.mlflow_callback())
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if last:
        print(f"   resuming from {last}")
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=last)
    if ctx is not None:
        seconds = time.perf_counter() - started
        ctx.details["log_history"] = log_history(trainer)
        ctx.extra_metrics["data_wait_fraction"] = counters["data_wait_seconds"] / max(seconds, 1e-9)
    return out


def log_history(trainer) -> list[dict]:
    """Trainer's log (loss, eval_loss, lr by step): the data behind the report's loss curves."""
    keep = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "eval_perplexity")
    return [{k: v for k, v in row.items() if k in keep or k.startswith("eval_")} for row in trainer.state.log_history]


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Logits of a sequence classifier over texts, in eval mode, no grad."""
    import numpy as np
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(model.device)
            out.append(model(**enc).logits.float().cpu().numpy())
    return np.concatenate(out)


def torch_latency(model, tokenizer, text: str, batch_size: int, seq_len: int, runs: int = 20, warmup: int = 3) -> dict:
    """Latency of one forward pass at a fixed batch and sequence length (padded), in ms."""
    import torch

    from lifecycle.evaluation.latency import measure

    enc = tokenizer([text] * batch_size, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    model.eval()

    def call():
        with torch.inference_mode():
            model(**enc)

    out = measure(call, warmup=warmup, runs=runs, runtime="torch")
    return {**out, "latency_batch_size": batch_size, "latency_seq_len": seq_len, "latency_threads": torch.get_num_threads()}
