"""finetune: text classification with the transformers Trainer, full or LoRA (peft).

LoRA is merged into the base weights before the artifact is written, so every later stage (distill,
export) sees a plain model; the adapter is kept beside it in `adapter/`, and the stage checks that the
merged model gives the logits the adapter model gave (`lora_merge_max_abs_diff`).

The checkpoint kept is the best one on the validation `metric` (not the last), and early stopping
watches the same metric. The pieces distill shares (label space, encoding, loss, scoring, loading) are
in `lifecycle.components.classification`, the Trainer pieces in `lifecycle.components.training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from lifecycle import tasks
from lifecycle.components.classification import (
    COLLAPSE_METRICS,
    VAL_METRICS,
    MultiLabel,
    ValMetric,
    collapse_gate,
)
from lifecycle.components.training import EarlyStopping, TrainConfig
from lifecycle.embedding import IMAGE_EMBEDDING_TRAINING
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import TORCH_LATENCY, TorchLatency
from lifecycle.evaluation.tables import TABLE_CLASSIFICATION, TABLE_REGRESSION
from lifecycle.generation import GENERATION_METRICS
from lifecycle.models import ModelSource
from lifecycle.schema import HF_HOLDS, Holds, StageBase, Strict, TaskType, Trains

TABLE_SCORES = (*TABLE_CLASSIFICATION, *TABLE_REGRESSION)
CONTROL_METRICS = (*(f"control_{m}" for m in (*CLASSIFICATION, *TABLE_SCORES)), "pretraining_gain")
# a table task's recipe (lifecycle.tabular) reports its scores and the gradient-boosting baseline
TABLE_METRICS = (*TABLE_SCORES, *(f"val_{m}" for m in TABLE_SCORES), *(f"baseline_gbdt_{m}" for m in TABLE_SCORES))
# an image task's recipe (lifecycle.images) reports an RBF SVM on the same pixels beside the model
IMAGE_METRICS = (*(f"baseline_svm_{m}" for m in TABLE_CLASSIFICATION), "torch_latency_b32_p50_ms")


class LoRA(Strict):
    r: int = Field(8, gt=0)  # rank: higher fits more, costs more trainable parameters
    alpha: int = Field(16, gt=0)  # scale = alpha / r
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: peft's default for the architecture (query, value)


class Control(Strict):
    """A from-scratch control: the same architecture and tokenizer, randomly initialised, trained on the
    same data and seed. It is fully fine-tuned even when the stage uses LoRA (adapters on frozen random
    weights would learn next to nothing and flatter the pre-trained model)."""

    train: TrainConfig | None = None  # None: the stage's own budget and hyperparameters


class Config(StageBase):
    kind: Literal["finetune"]
    tasks = ("classification", "tabular-classification", "tabular-regression", "image-classification",
             "image-embedding", "generation")
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    model: ModelSource | None = None  # start from here instead of the parent stage's artifact
    train: TrainConfig = TrainConfig()
    lora: LoRA | None = None  # None: full fine-tuning
    multi_label: MultiLabel | None = None  # None: one label per example (softmax + cross-entropy)
    # "balanced": weight_c = n / (k * count_c), as sklearn; or {label: weight}. Helps minority-class F1
    # on skewed data (ChemProt: 40% INHIBITOR) at some cost in accuracy.
    class_weights: Literal["balanced"] | dict[str, Annotated[float, Field(gt=0)]] | None = None
    metric: ValMetric = "f1_micro"  # validation metric that picks the kept checkpoint and drives early stopping
    early_stopping: EarlyStopping | None = None
    # Validation examples scored at each evaluation (a seeded random subset); None: all. Evaluations
    # recur every eval_steps, so on a CPU this bounds their cost. The test split is always scored whole.
    validation_limit: int | None = Field(None, gt=0)
    latency: TorchLatency = TorchLatency()
    control: Control | None = None  # also train from random init: control_<metric> and pretraining_gain
    baseline: bool = False  # TF-IDF + logistic regression on the same split, for context: baseline_tfidf_*
    # What the classification head reads. auto: the pooling the encoder declares (a sentence-transformers
    # folder's 1_Pooling, or pooling.json), else the architecture's own ([CLS] for BERT). mean: the masked
    # token mean through the pooler's dense + tanh (lifecycle.embedding.apply_head_pooling); cls: [CLS].
    head_pooling: Literal["auto", "cls", "mean"] = "auto"
    # Default gate on minority_prediction_ratio (see collapse_metrics): a model that predicts (almost)
    # only one class while the labels are not that skewed fails the stage. None: no default gate;
    # collapse_on_fail "warn": reported in every report, junit and `lifecycle gate` without stopping.
    collapse_min: float | None = Field(0.2, ge=0, le=1)
    collapse_on_fail: Literal["stop", "warn"] = "stop"

    def needs_parent(self) -> bool:
        return self.model is None

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, lora=self.lora, adapters=True)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return HF_HOLDS  # a new head on any encoder or decoder; a classifier is fine-tuned again

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return tasks.get(task).finetunes_into

    def task_hint(self, task: TaskType) -> str | None:
        return f"{task} models are trained by {tasks.get(task).trained_by}"

    def metric_names(self) -> set[str]:
        return {*CLASSIFICATION, *TORCH_LATENCY, *VAL_METRICS, "eval_loss", "params_total", "params_trainable",
                "trainable_fraction", "size_mb", "train_seconds", "train_steps", "lora_merge_max_abs_diff",
                "data_wait_fraction", *CONTROL_METRICS, *(f"baseline_tfidf_{m}" for m in CLASSIFICATION),
                *COLLAPSE_METRICS, *TABLE_METRICS, *IMAGE_METRICS, *GENERATION_METRICS,
                *IMAGE_EMBEDDING_TRAINING}

    def task_problem(self, task: TaskType) -> str | None:
        return tasks.get(task).finetune_problem(self)

    def model_post_init(self, _ctx) -> None:
        if self.multi_label is None:  # a label set per example has no majority class to collapse onto
            self.gates = collapse_gate(self.gates, self.collapse_min, self.collapse_on_fail)


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    plugin = tasks.get(ctx.pipeline.task.type)
    if plugin.own_training:  # a model that does not read text (a table's): the task's recipe
        return plugin.finetune(cfg, parent, ctx)
    return finetune_text(cfg, parent, ctx)


def finetune_text(cfg: Config, parent, ctx) -> tuple[dict, dict]:
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
        from lifecycle.evaluation.baseline import tfidf_logreg

        metrics.update(tfidf_logreg(data, ctx.seed))
    return metrics, details


def fit(model, splits, tokenizer, labels, cfg: Config, train: TrainConfig, checkpoints: Path, seed: int, ctx=None,
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


def control(config, tokenizer, splits, data, labels, cfg: Config, ctx) -> dict:
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


def with_lora(model, lora: LoRA, newly_initialised: list[str]) -> tuple[object, list[str]]:
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
