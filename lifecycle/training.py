"""Pieces every training stage shares: the training config, Trainer arguments, crash-resume, and
PyTorch inference for metrics and latency. Plain functions, no base class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError
from lifecycle.schema import Strict


class TrainConfig(Strict):
    """Trainer settings shared by pretrain, adapt, finetune and distill."""

    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs; the budget for quick runs (null: epochs)")
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
        max_steps=cfg.max_steps or -1,  # the Trainer's "use epochs"
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
    """Train, resuming from the newest complete checkpoint in checkpoint_dir when a previous run crashed.

    A loss or a weight that is no longer finite stops training with a LifecycleError (and its
    checkpoints go: resuming would only diverge again). With the stage context: per-step metrics go to
    <run>/metrics/<stage>.jsonl as they are logged, time spent waiting for data is measured
    (`data_wait_fraction`), the Trainer's log history goes into the manifest (for the loss plots), and
    an active MLflow run gets a nested run for the stage.
    """
    import shutil
    import time

    from lifecycle import tracking

    counters = None
    trainer.add_callback(divergence_guard(ctx.stage.label if ctx is not None else None))
    if ctx is not None:
        trainer.add_callback(tracking.step_logger(ctx.run_dir / "metrics" / f"{ctx.stage.label}.jsonl"))
        counters = tracking.time_data_wait(trainer)
        if tracking.mlflow_active():
            trainer.add_callback(tracking.mlflow_callback())
    # The main process removes incomplete checkpoints first; the others then find the same newest one.
    with trainer.args.main_process_first(desc="check checkpoints"):
        last = last_checkpoint(checkpoint_dir, discard=trainer.is_world_process_zero(), echo=print)
    if last:
        print(f"   resuming from {last.name} (verified complete: {last})")
    started = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(last) if last else None)
    except TrainingDiverged:
        if trainer.is_world_process_zero():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        raise
    if ctx is not None:
        seconds = time.perf_counter() - started
        ctx.details["log_history"] = log_history(trainer)
        ctx.extra_metrics["data_wait_fraction"] = counters["data_wait_seconds"] / max(seconds, 1e-9)
    return out


# ------------------------------------------------------------------------------------ checkpoints
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def last_checkpoint(checkpoint_dir: Path, discard: bool = False, echo=None) -> Path | None:
    """The newest complete Trainer checkpoint under checkpoint_dir, or None.

    A kill while the Trainer writes a checkpoint leaves a directory that is missing files (it writes
    the weights, then the optimizer, then trainer_state.json) or holds a truncated one; the newest
    directory alone (transformers' get_last_checkpoint) would then fail every later run. With
    `discard`, incomplete checkpoints are removed, so the Trainer's rotation never counts them."""
    import re
    import shutil

    found = [d for d in checkpoint_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", d.name) and d.is_dir()]
    for d in sorted(found, key=lambda d: int(d.name.split("-")[1]), reverse=True):
        problem = checkpoint_problem(d)
        if problem is None:
            return d
        if echo is not None:
            echo(f"   {'discarding' if discard else 'skipping'} incomplete checkpoint {d.name}: {problem}")
        if discard:
            shutil.rmtree(d, ignore_errors=True)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None: trainer_state.json parses, and the
    weights and the optimizer state open. Tensor data is not read (safetensors checks its header
    against the file size; torch.load with mmap needs the zip's directory, written last)."""
    import json

    import torch
    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    index = next((path / n for n in WEIGHT_INDEXES if (path / n).is_file()), None)
    try:
        if index is not None:
            weights = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        else:
            weights = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
    except (OSError, ValueError, KeyError):
        return f"unreadable {index.name}"
    if not weights:
        return "no model weights"
    for f in [*weights, path / "optimizer.pt"]:
        if not f.is_file():
            return f"no {f.name}"
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            else:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure to open means the file is unusable
            return f"unreadable {f.name} ({type(exc).__name__})"
    return None


# ------------------------------------------------------------------------------------ divergence
class TrainingDiverged(LifecycleError):
    """The loss or a weight is no longer finite."""


def divergence_guard(label: str | None):
    """A Trainer callback that stops training once the logged loss or any weight is NaN or infinite.
    Weights are checked on steps that log or save (so no NaN checkpoint is written) and at the end:
    one pass over the parameters per logging step. The Trainer's own NaN filter keeps a single bad
    step (an fp16 overflow the scaler skips) out of the logged loss, so only lasting divergence stops."""
    import math

    import torch
    from transformers import TrainerCallback

    def stop(args, state, what: str):
        where = f"stage '{label}': " if label else ""
        raise TrainingDiverged(f"{where}training diverged at step {state.global_step}: {what}; lower `train.lr` "
                               f"(now {args.learning_rate:g}), raise `train.warmup_ratio` or check the data")

    def check_weights(args, state, model):
        if model is None:
            return
        with torch.no_grad():
            bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            stop(args, state, f"weight '{bad}' is not finite")

    class Guard(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if control.should_log or control.should_save or state.global_step >= state.max_steps:
                check_weights(args, state, model)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "eval_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    stop(args, state, f"{key} is {value}")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            check_weights(args, state, model)

    return Guard()


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
