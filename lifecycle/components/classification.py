"""Sequence classification shared by the stages that train classifiers (finetune, distill): the label
space (single- or multi-label), encoding a labelled split, the loss (class weights, multi-label), the
Trainer that uses it, scoring, loading a classifier from an encoder, and the collapse check."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError, quiet
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.models import ModelSource
from lifecycle.schema import Gate, Strict

ValMetric = Literal["accuracy", "f1_macro", "f1_micro"]
VAL_METRICS = tuple(f"val_{m}" for m in CLASSIFICATION)
COLLAPSE_METRICS = ("majority_prediction_fraction", "majority_label_fraction", "minority_prediction_ratio")


class MultiLabel(Strict):
    """Each example may carry several labels: `"a|b"` in the label field, or a JSON list `["a", "b"]`."""

    separator: str = "|"
    threshold: float = Field(0.5, gt=0, lt=1)  # a label is predicted when sigmoid(logit) >= threshold


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


# ------------------------------------------------------------------------------------------ loss, scores
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


def classifier_trainer(loss, **kwargs):
    """A Trainer whose loss is ours (class weights, multi-label); the model never sees the labels.
    The class is defined here so that transformers is imported only when a stage runs."""
    from transformers import Trainer

    from lifecycle.components.training import length_grouped_sampler

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


# ------------------------------------------------------------------------------------------------ models
@dataclass
class Classifier:
    """A loaded classifier, with what loading it found out (None for a model built from a preset)."""

    model: object
    tokenizer: object
    head_pooling: str | None = None  # what the head reads ("mean", "cls" or "architecture default")
    newly_initialised: list[str] | None = None  # weights the checkpoint lacked (a new head, a random pooler)

    def details(self) -> dict:
        """The manifest details of the load: head_pooling and newly_initialised (none for a preset)."""
        if self.newly_initialised is None:
            return {}
        return {"head_pooling": self.head_pooling, "newly_initialised": self.newly_initialised}


def load_classifier(source, ctx, data, labels: LabelSpace, multi_label: bool = False,
                    pooling: str = "auto") -> Classifier:
    """A sequence classifier for the task's labels from a ModelSource or an artifact directory; its head
    pools as `pooling` says ("auto": as the encoder declares, see finetune's Config.head_pooling)."""
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models
    from lifecycle.embedding import HEAD_POOLING_KEY, apply_head_pooling, declared_pooling

    fields = {"num_labels": len(labels.names), "id2label": dict(enumerate(labels.names)),
              "label2id": {name: i for i, name in enumerate(labels.names)},
              "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}
    max_length = ctx.pipeline.task.max_length
    seed_everything(ctx.seed)
    if isinstance(source, ModelSource) and source.preset:
        tokenizer = models.train_tokenizer(data.splits["train"]["text"], source.tokenizer, source.family, max_length)
        config = models.preset_config(source, len(tokenizer), pad_token_id=tokenizer.pad_token_id, **fields)
        return Classifier(AutoModelForSequenceClassification.from_config(config), tokenizer)
    path = models.model_dir(source, ctx.pipeline) if isinstance(source, ModelSource) else Path(source)
    tokenizer = models.load_tokenizer(path, max_length)
    if pooling == "auto":  # a fine-tuned parent's config already says; else what the encoder was trained with
        declared = declared_pooling(path)
        pooling = declared.mode if declared is not None else None
    # A new classification head is expected here (the parent is an encoder or a different task).
    with quiet.new_head():
        model, info = models.load_model(AutoModelForSequenceClassification, path, ignore_mismatched_sizes=True,
                                        output_loading_info=True, **fields)
    if pooling is not None:  # set after loading: from_pretrained hands unknown config keys to the model class
        setattr(model.config, HEAD_POOLING_KEY, pooling)
        apply_head_pooling(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return Classifier(model, tokenizer,
                      head_pooling=getattr(model.config, HEAD_POOLING_KEY, None) or "architecture default",
                      newly_initialised=sorted(info["missing_keys"]) + sorted(k[0] for k in info["mismatched_keys"]))


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


# -------------------------------------------------------------------------------------------- collapse
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


def collapse_warning(metrics: dict, minimum: float | None, lora: bool = False, lr: float | None = None) -> str | None:
    """A one-paragraph warning naming the likely causes of a collapse, or None when there is none."""
    ratio = metrics.get("minority_prediction_ratio")
    if ratio is None or ratio >= (minimum if minimum is not None else 0.2):
        return None
    causes = ["a head path that cannot learn (frozen pooler/dense under LoRA, or a [CLS] head on an encoder "
              "trained for mean pooling: see head_pooling)" if lora else "too few steps for the head to move",
              f"the learning rate ({lr}: too high diverges, too low never leaves the prior)",
              "class imbalance (class_weights: balanced, or more minority examples)"]
    return (f"prediction collapse: {metrics['majority_prediction_fraction']:.0%} of test predictions are one class "
            f"while the most frequent label is {metrics['majority_label_fraction']:.0%} of the test set "
            f"(minority_prediction_ratio {ratio:.2f}); likely causes: " + "; ".join(causes))
