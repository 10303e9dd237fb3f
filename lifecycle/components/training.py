"""Pieces every training stage shares: the training config, Trainer arguments (plain, and keeping the
best checkpoint), callbacks (early stopping, divergence guard), the length-grouped sampler and
crash-resume. Plain functions, no base class. Batched inference lives in
`lifecycle.components.inference`, checkpoint checks in `lifecycle.components.checkpoints`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError, quiet
from lifecycle.schema import Strict

# what every finetune and distill recipe may report of its training beside its scores
TRAINING_METRICS = ("eval_loss", "params_total", "params_trainable", "trainable_fraction", "size_mb", "train_seconds",
                    "train_steps", "data_wait_fraction", "lora_merge_max_abs_diff")


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
    max_grad_norm: float = Field(1.0, ge=0)  # 0 turns clipping off


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


@dataclass
class Measured:
    """What `train` measured for its stage: the Trainer's log (the manifest's `log_history`, behind the
    report's loss curves) and the share of training time spent waiting for data (`data_wait_fraction`)."""

    log_history: list[dict]
    data_wait_fraction: float


def train(trainer, checkpoint_dir: Path, ctx=None, echo=None) -> Measured | None:
    """Train, resuming from the newest complete checkpoint in checkpoint_dir when a previous run crashed.

    A loss or a weight that is no longer finite stops training with a LifecycleError (and its
    checkpoints go: resuming would only diverge again). With the stage context: per-step metrics go to
    <run>/metrics/<stage>.jsonl as they are logged, the pipeline's MLflow run (if any) gets a nested
    run for the stage, and what was measured is returned for the stage to report (None without the
    context: a control run). What it says (a resume) goes to `echo`, else the context's echo; without
    either it says nothing.
    """
    import shutil
    import time

    from lifecycle import tracking
    from lifecycle.components.checkpoints import last_checkpoint

    if echo is None:
        echo = ctx.echo if ctx is not None else _quiet

    counters = None
    one_progress_bar(trainer, ctx.stage.label if ctx is not None else None)
    trainer.add_callback(divergence_guard(ctx.stage.label if ctx is not None else None))
    if ctx is not None:
        trainer.add_callback(tracking.step_logger(ctx.run_dir / "metrics" / f"{ctx.stage.label}.jsonl"))
        counters = tracking.time_data_wait(trainer)
        if ctx.mlflow_run is not None:
            trainer.add_callback(tracking.mlflow_callback())
    # The main process removes incomplete checkpoints first; the others then find the same newest one.
    with trainer.args.main_process_first(desc="check checkpoints"):
        last = last_checkpoint(checkpoint_dir, discard=trainer.is_world_process_zero(), echo=echo)
    if last:
        echo(f"   resuming from {last.name} (verified complete: {last})")
    started = time.perf_counter()
    try:
        with quiet.training():
            trainer.train(resume_from_checkpoint=str(last) if last else None)
    except TrainingDiverged:
        if trainer.is_world_process_zero():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        raise
    if ctx is None:
        return None
    seconds = time.perf_counter() - started
    return Measured(log_history(trainer), counters["data_wait_seconds"] / max(seconds, 1e-9))


def _quiet(_text: str) -> None:
    pass


# Shown in the bar (as loss, val_loss, val_<metric>); the Trainer's other log keys are timings and counters.
_HIDDEN = ("runtime", "per_second", "epoch", "total_flos", "grad_norm", "learning_rate", "train_")


def one_progress_bar(trainer, label: str | None) -> None:
    """One progress bar per training stage, named after it, with the latest loss and validation metrics
    in the bar. The Trainer's own ProgressCallback writes each log dict as a line between bar fragments
    and opens a second bar for every evaluation; everything it would print is in metrics/<stage>.jsonl."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=label)
            self.current_step, self.shown = 0, {}

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            pass  # evaluation shows up as val_* in the training bar, not as a bar of its own

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None:
                return
            for key, value in (logs or {}).items():
                if isinstance(value, (int, float)) and not any(h in key for h in _HIDDEN):
                    self.shown[key.replace("eval_", "val_", 1)] = f"{value:.4g}"
            self.training_bar.set_postfix(self.shown, refresh=False)

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgress())


# ------------------------------------------------------------------------ keeping the best checkpoint
class EarlyStopping(Strict):
    patience: int = Field(3, gt=0)  # evaluations without improvement before training stops
    threshold: float = Field(0.0, ge=0)  # smallest change of the metric that counts as improvement


def best_checkpoint_args(train: TrainConfig, checkpoints: Path, seed: int, metric: str, **extra):
    """Trainer arguments that keep the checkpoint best on the validation `metric` (higher is better)."""
    # Keeping the best checkpoint needs a save at every evaluation, so saves follow the eval cadence
    # (per epoch, or every eval_steps); save_steps then only matters without eval_steps.
    saves = {"save_strategy": "steps", "save_steps": train.eval_steps} if train.eval_steps else {"save_strategy": "epoch"}
    return training_args(train, checkpoints, seed, metric_for_best_model=metric, greater_is_better=True,
                         load_best_model_at_end=True, **saves, **extra)


def callbacks(early: EarlyStopping | None) -> list:
    if early is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=early.patience, early_stopping_threshold=early.threshold)]


def length_grouped_sampler(args, dataset):
    """Training batches of similar lengths, drawn in a random order seeded by (data seed, epoch).

    Far less padding on uneven sentences (ChemProt: 1.5-2x less compute per epoch on a CPU) for slightly
    less random batches. transformers' own `group_by_length` draws from the global RNG, which a resumed
    run does not reproduce; seeding by epoch makes a resumed run see the batches an uninterrupted one saw.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    seed = args.data_seed if args.data_seed is not None else args.seed

    class SeededLengthGroupedSampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls this before each epoch (and before a resume)
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    return SeededLengthGroupedSampler(args.train_batch_size * args.gradient_accumulation_steps, dataset=dataset,
                                      model_input_name="input_ids")


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
