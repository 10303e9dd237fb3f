"""finetune: text classification with the transformers Trainer, full or LoRA (peft).

LoRA is merged into the base weights before the artifact is written, so every later stage (distill,
export) sees a plain model; the adapter is kept beside it in `adapter/`, and the stage checks that the
merged model gives the logits the adapter model gave (`lora_merge_max_abs_diff`).

The checkpoint kept is the best one on the validation `metric` (not the last), and early stopping
watches the same metric. The pieces distill shares (data encoding, scoring, loading, Trainer
arguments) are plain functions here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import TORCH_LATENCY
from lifecycle.models import ModelSource
from lifecycle.schema import Gate, StageBase, Strict
from lifecycle.training import TrainConfig

ValMetric = Literal["accuracy", "f1_macro", "f1_micro"]
VAL_METRICS = tuple(f"val_{m}" for m in CLASSIFICATION)
CONTROL_METRICS = (*(f"control_{m}" for m in CLASSIFICATION), "pretraining_gain")
COLLAPSE_METRICS = ("majority_prediction_fraction", "majority_label_fraction", "minority_prediction_ratio")


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


class TorchLatency(Latency):
    threads: int | None = Field(None, gt=0, description="torch intra-op threads while timing; None: torch's default")


class EarlyStopping(Strict):
    patience: int = Field(3, gt=0)  # evaluations without improvement before training stops
    threshold: float = Field(0.0, ge=0)  # smallest change of the metric that counts as improvement


class MultiLabel(Strict):
    """Each example may carry several labels: `"a|b"` in the label field, or a JSON list `["a", "b"]`."""

    separator: str = "|"
    threshold: float = Field(0.5, gt=0, lt=1)  # a label is predicted when sigmoid(logit) >= threshold


class Control(Strict):
    """A from-scratch control: the same architecture and tokenizer, randomly initialised, trained on the
    same data and seed. It is fully fine-tuned even when the stage uses LoRA (adapters on frozen random
    weights would learn next to nothing and flatter the pre-trained model)."""

    train: TrainConfig | None = None  # None: the stage's own budget and hyperparameters


class Config(StageBase):
    kind: Literal["finetune"]
    consumes = "hf-model"
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    model: ModelSource | None = None  # start from here instead of the parent stage's artifact
    train: TrainConfig = TrainConfig()
    lora: LoRA | None = None  # None: full fine-tuning
    multi_label: MultiLabel | None = None  # None: one label per example (softmax + cross-entropy)
    # "balanced": weight_c = n / (k * count_c), as sklearn; or {label: weight}. Helps minority-class F1
    # on skewed data (ChemProt: 40% INHIBITOR) at some cost in accuracy.
    class_weights: Literal["balanced"] | dict[str, float] | None = None
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

    def metric_names(self) -> set[str]:
        return {*CLASSIFICATION, *TORCH_LATENCY, *VAL_METRICS, "eval_loss", "params_total", "params_trainable",
                "trainable_fraction", "size_mb", "train_seconds", "train_steps", "lora_merge_max_abs_diff",
                "data_wait_fraction", *CONTROL_METRICS, *(f"baseline_tfidf_{m}" for m in CLASSIFICATION),
                *COLLAPSE_METRICS}

    def model_post_init(self, _ctx) -> None:
        if self.multi_label is None:  # a label set per example has no majority class to collapse onto
            self.gates = collapse_gate(self.gates, self.collapse_min, self.collapse_on_fail)


def run(cfg: Config, parent, ctx) -> dict:
    import time

    from lifecycle import models
    from lifecycle.evaluation import score_test

    task = ctx.pipeline.task
    data = ctx.task_data()
    labels = label_space(data, cfg.multi_label)
    source = cfg.model or Path(parent.path)
    model, tokenizer = load_classifier(source, ctx, data, labels, multi_label=cfg.multi_label is not None,
                                       pooling=cfg.head_pooling)
    if cfg.lora:
        model = with_lora(model, cfg.lora, ctx)
    counts = models.count_parameters(model)
    splits = encode(data, tokenizer, task.max_length, labels, cfg.validation_limit, ctx.seed)
    started = time.time()
    trainer, val = fit(model, splits, tokenizer, labels, cfg, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx)
    train_seconds = time.time() - started
    ctx.details.update(best_checkpoint=trainer.state.best_model_checkpoint,
                       best_metric=trainer.state.best_metric, labels=labels.names)
    if not trainer.is_world_process_zero():
        return {}  # under torchrun only rank 0's artifact is kept: saving and testing are its job

    metrics = {}
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
        warn_if_collapsed(metrics, cfg.collapse_min, ctx, lora=cfg.lora is not None, lr=cfg.train.lr)
    metrics.update(latency(model, tokenizer, data.splits["test"]["text"][0], cfg.latency, task.max_length))
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
    return metrics


def fit(model, splits, tokenizer, labels, cfg: Config, train: TrainConfig, checkpoints: Path, seed: int, ctx=None):
    """Train with the Trainer (resuming after a crash); returns the trainer and validation metrics of the
    best checkpoint, which the Trainer reloads at the end of training."""
    from lifecycle import training

    weights = class_weights(cfg.class_weights, splits["train"]["labels"], labels)
    if weights is not None and ctx is not None:
        ctx.details["class_weights"] = dict(zip(labels.names, weights))
    trainer = classifier_trainer(
        classification_loss(weights, labels.multi), model=model,
        args=trainer_args(train, checkpoints, seed, cfg.metric), train_dataset=splits["train"],
        eval_dataset=splits["validation"], data_collator=collator(tokenizer),
        compute_metrics=lambda p: score(p.predictions, p.label_ids, labels), callbacks=callbacks(cfg.early_stopping))
    training.train(trainer, checkpoints, ctx)
    return trainer, trainer.evaluate()


def control(config, tokenizer, splits, data, labels, cfg: Config, ctx) -> dict:
    """The fine-tuned model's architecture and tokenizer from random initialisation, same data and seed."""
    from transformers import AutoModelForSequenceClassification

    from lifecycle.embedding import apply_head_pooling

    _seed(ctx.seed)
    model = apply_head_pooling(AutoModelForSequenceClassification.from_config(config))
    # its own checkpoints, so a crash resumes the control without touching the main run's
    trainer, _ = fit(model, splits, tokenizer, labels, cfg, cfg.control.train or cfg.train,
                     ctx.scratch_dir / "control-checkpoints", ctx.seed)
    logits = logits_of(trainer.model, tokenizer, data.splits["test"]["text"], ctx.pipeline.task.max_length)
    return {f"control_{k}": v for k, v in score(logits, splits["test"]["labels"], labels).items()}


# ------------------------------------------------------------------------------------------ labels, data
@dataclass
class LabelSpace:
    """Label names and how a data row's label id maps to training targets (class id or multi-hot)."""

    names: list[str]
    targets: list  # data label id -> class id (single-label) or multi-hot list of floats
    multi: bool
    threshold: float = 0.5  # multi-label: predict a label when sigmoid(logit) >= threshold


def label_space(data, multi_label: MultiLabel | None) -> LabelSpace:
    if multi_label is None:
        return LabelSpace(list(data.labels), list(range(data.num_labels)), multi=False)
    sets = [_label_set(name, multi_label.separator) for name in data.labels]
    names = sorted(set().union(*sets))
    hot = [[1.0 if n in s else 0.0 for n in names] for s in sets]
    return LabelSpace(names, hot, multi=True, threshold=multi_label.threshold)


def _label_set(value: str, separator: str) -> set[str]:
    # The data layer stores labels as strings; a JSON/Python list comes through as "['a', 'b']".
    if value.startswith("["):
        try:
            return {str(v) for v in ast.literal_eval(value)}
        except (ValueError, SyntaxError):
            raise LifecycleError(f"multi-label value {value!r} is neither a list nor '{separator}'-separated") from None
    return {part.strip() for part in value.split(separator) if part.strip()}


def encode(data, tokenizer, max_length: int, labels: LabelSpace, validation_limit: int | None = None, seed: int = 0):
    """Tokenized splits with a `labels` column (class ids or multi-hot floats); padding happens per batch."""

    def tokenize(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["labels"] = [labels.targets[i] for i in batch["label"]]
        return out

    splits = data.splits.map(tokenize, batched=True, remove_columns=["text", "label"], desc="tokenize")
    val = splits["validation"]
    if validation_limit and len(val) > validation_limit:
        val = val.shuffle(seed=seed).select(range(validation_limit))
    # Scored in length order: batches of similar lengths waste little on padding (metrics ignore order).
    splits["validation"] = val.select(sorted(range(len(val)), key=lambda i: len(val[i]["input_ids"])))
    return splits


def collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def class_weights(option, targets, labels: LabelSpace) -> list[float] | None:
    """Per-class loss weights (single-label) or positive-class weights (multi-label)."""
    import numpy as np

    if option is None:
        return None
    if isinstance(option, dict):
        unknown = sorted(set(option) - set(labels.names))
        if unknown:
            raise LifecycleError(f"class_weights: unknown labels {unknown}; the labels are {labels.names}")
        return [float(option.get(name, 1.0)) for name in labels.names]
    if labels.multi:  # pos_weight = negatives / positives per label (BCEWithLogitsLoss)
        pos = np.asarray(targets, dtype=float).sum(0)
        return (np.maximum(len(targets) - pos, 1) / np.maximum(pos, 1)).tolist()
    counts = np.bincount(np.asarray(targets), minlength=len(labels.names))
    return (len(targets) / (len(labels.names) * np.maximum(counts, 1))).tolist()


def classification_loss(weights: list[float] | None, multi: bool):
    import torch
    import torch.nn.functional as F

    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def loss(logits, targets):
        wt = None if w is None else w.to(logits.device)
        if multi:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=wt)
        return F.cross_entropy(logits, targets, weight=wt)

    return loss


def score(logits, targets, labels: LabelSpace) -> dict[str, float]:
    """accuracy (exact match for multi-label), macro-F1 and micro-F1, through the shipped evaluate modules."""
    from lifecycle.evaluation import predicted_labels, scores

    return scores(predicted_labels(logits, labels.threshold if labels.multi else None), targets)


# ---------------------------------------------------------------------------------------- models, training
def load_classifier(source, ctx, data, labels: LabelSpace, multi_label: bool = False, pooling: str = "auto"):
    """A sequence classifier for the task's labels from a ModelSource or an artifact directory; its head
    pools as `pooling` says ("auto": as the encoder declares, see Config.head_pooling)."""
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models
    from lifecycle.embedding import HEAD_POOLING_KEY, apply_head_pooling, declared_pooling

    fields = {"num_labels": len(labels.names), "id2label": dict(enumerate(labels.names)),
              "label2id": {name: i for i, name in enumerate(labels.names)},
              "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}
    max_length = ctx.pipeline.task.max_length
    _seed(ctx.seed)
    if isinstance(source, ModelSource) and source.preset:
        tokenizer = models.train_tokenizer(data.splits["train"]["text"], source.tokenizer, source.family, max_length)
        config = models.preset_config(source, len(tokenizer), pad_token_id=tokenizer.pad_token_id, **fields)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    path = models.model_dir(source, ctx.pipeline) if isinstance(source, ModelSource) else Path(source)
    tokenizer = models.load_tokenizer(path, max_length)
    if pooling == "auto":  # a fine-tuned parent's config already says; else what the encoder was trained with
        declared = declared_pooling(path)
        pooling = declared.mode if declared is not None else None
    # A new classification head is expected here (the parent is an encoder or a different task).
    model, info = models.load_model(AutoModelForSequenceClassification, path, ignore_mismatched_sizes=True,
                                    output_loading_info=True, **fields)
    if pooling is not None:  # set after loading: from_pretrained hands unknown config keys to the model class
        setattr(model.config, HEAD_POOLING_KEY, pooling)
        apply_head_pooling(model)
    ctx.details["head_pooling"] = getattr(model.config, HEAD_POOLING_KEY, None) or "architecture default"
    ctx.details["newly_initialised"] = sorted(info["missing_keys"]) + sorted(k[0] for k in info["mismatched_keys"])
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def with_lora(model, lora: LoRA, ctx):
    """The model wrapped with LoRA adapters; everything on the head's path is trained in full.

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
    fresh = {key.rsplit(".", 1)[0] for key in ctx.details.get("newly_initialised", [])
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
    ctx.details["trained_in_full"] = fresh
    return model


def collapse_gate(gates: list[Gate], minimum: float | None, on_fail: str = "stop") -> list[Gate]:
    """`gates` plus the default collapse gate, unless disabled or the user gated that metric."""
    if minimum is None or any(g.metric == "minority_prediction_ratio" for g in gates):
        return gates
    return [*gates, Gate(metric="minority_prediction_ratio", min=minimum, on_fail=on_fail)]


def collapse_metrics(logits, targets, num_labels: int) -> dict[str, float]:
    """Does the model predict (almost) only one class? `majority_prediction_fraction`: share of test
    predictions that are the most-predicted class; `majority_label_fraction`: share of the test labels
    that are the most frequent label; `minority_prediction_ratio` = (1 - the first) / (1 - the second):
    how often the model predicts anything but its favourite class, relative to how often the labels are
    not the majority. ~1 for a healthy model, 0 for one that predicts a single class (1 when the labels
    themselves are all one class). Stable on skewed data: 13% positives predicted as 0% gives 0."""
    import numpy as np

    pred = np.bincount(np.asarray(logits).argmax(-1), minlength=num_labels)
    gold = np.bincount(np.asarray(targets), minlength=num_labels)
    mpf, mlf = pred.max() / max(pred.sum(), 1), gold.max() / max(gold.sum(), 1)
    ratio = 1.0 if mlf >= 1 else min(max((1 - mpf) / (1 - mlf), 0.0), 1e3)
    return {"majority_prediction_fraction": float(mpf), "majority_label_fraction": float(mlf),
            "minority_prediction_ratio": float(ratio)}


def warn_if_collapsed(metrics: dict, minimum: float | None, ctx, lora: bool = False, lr: float | None = None) -> None:
    """A one-paragraph warning (stderr and the manifest's details) naming the likely causes of a collapse."""
    import sys

    ratio = metrics.get("minority_prediction_ratio")
    if ratio is None or ratio >= (minimum if minimum is not None else 0.2):
        return
    causes = ["a head path that cannot learn (frozen pooler/dense under LoRA, or a [CLS] head on an encoder "
              "trained for mean pooling: see head_pooling)" if lora else "too few steps for the head to move",
              f"the learning rate ({lr}: too high diverges, too low never leaves the prior)",
              "class imbalance (class_weights: balanced, or more minority examples)"]
    text = (f"prediction collapse: {metrics['majority_prediction_fraction']:.0%} of test predictions are one class "
            f"while the most frequent label is {metrics['majority_label_fraction']:.0%} of the test set "
            f"(minority_prediction_ratio {ratio:.2f}); likely causes: " + "; ".join(causes))
    ctx.details["collapse_warning"] = text
    print(f"   warning: {text}", file=sys.stderr)


def trainer_args(train: TrainConfig, checkpoints: Path, seed: int, metric: str, **extra):
    from lifecycle import training

    # Keeping the best checkpoint needs a save at every evaluation, so saves follow the eval cadence
    # (per epoch, or every eval_steps); save_steps then only matters without eval_steps.
    saves = {"save_strategy": "steps", "save_steps": train.eval_steps} if train.eval_steps else {"save_strategy": "epoch"}
    return training.training_args(train, checkpoints, seed, metric_for_best_model=metric, greater_is_better=True,
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


def classifier_trainer(loss, **kwargs):
    """A Trainer whose loss is ours (class weights, multi-label); the model never sees the labels.
    The class is defined here so that transformers is imported only when a stage runs."""
    from transformers import Trainer

    class ClassifierTrainer(Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.model_accepts_loss_kwargs = False  # a plain mean loss: the Trainer divides it by grad_accum

        def _get_train_sampler(self, train_dataset=None):
            return length_grouped_sampler(self.args, train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs.pop("labels")
            outputs = model(**inputs)
            value = loss(outputs.logits, targets)
            return (value, outputs) if return_outputs else value

    return ClassifierTrainer(**kwargs)


# ----------------------------------------------------------------------------------------- inference
def logits_of(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Logits in input order, batched by length so little time goes into padding."""
    import numpy as np

    from lifecycle.training import predict_logits

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = predict_logits(model, tokenizer, [texts[i] for i in order], max_length, batch_size)
    result = np.empty_like(out)
    result[order] = out
    return result


def latency(model, tokenizer, text: str, cfg: TorchLatency, max_length: int) -> dict:
    """torch latency at the configured batch, sequence length (padded) and thread count, on the CPU
    (where later stages serve the model), also after training on a GPU."""
    import torch

    from lifecycle.training import torch_latency

    model.to("cpu")
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return torch_latency(model, tokenizer, text, cfg.batch_size, cfg.seq_len or max_length, cfg.runs, cfg.warmup)
    finally:
        torch.set_num_threads(before)


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
