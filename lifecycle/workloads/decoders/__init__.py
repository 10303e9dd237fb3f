"""The decoders wing: text generation (prompts in, tokens out) with a causal LM: fine-tuning on response
tokens (full or LoRA) and token-level distillation. Pre-training and adapting a causal LM are the text
wing's language-model recipes (`objective: clm`)."""

from __future__ import annotations

from lifecycle.evaluation.latency import LATENCY_SETTINGS
from lifecycle.workloads import Recipe
from lifecycle.workloads.decoders import generation
from lifecycle.workloads.decoders.distillation import DISTILL_METRICS
from lifecycle.workloads.decoders.model import GENERATION_METRICS

TASKS = (generation.TASK,)

NO_CLASSES = "collapse_min: a generator has no classes to collapse onto; set `collapse_min: null`"


def finetune_refuses(cfg, sources) -> str | None:
    unsupported = {"multi_label": cfg.multi_label, "class_weights": cfg.class_weights,
                   "early_stopping": cfg.early_stopping, "validation_limit": cfg.validation_limit,
                   "control": cfg.control, "baseline": cfg.baseline or None,
                   "head_pooling": None if cfg.head_pooling == "auto" else 1}
    given = next((k for k, v in unsupported.items() if v is not None), None)
    if given:
        return f"{given}: not supported for generation (the recipe keeps the last step; perplexity is its score)"
    if cfg.collapse_min is not None:  # the finetune stage adds that gate unless told not to
        return NO_CLASSES
    if cfg.model is not None and cfg.model.preset:
        return "model: a generation finetune continues a causal LM (`path`, or the parent); pre-train presets first"
    return None


def distill_refuses(cfg, sources) -> str | None:
    unsupported = {"student.model": cfg.student.model, "hidden_weight": cfg.hidden_weight or None,
                   "early_stopping": cfg.early_stopping, "validation_limit": cfg.validation_limit}
    given = next((k for k, v in unsupported.items() if v is not None), None)
    if given:
        return (f"{given}: not supported for generation (the student is the teacher with fewer layers, trained "
                "on the teacher's token logits; the recipe keeps the last step)")
    if {"metric", "cache_teacher_logits"} & cfg.model_fields_set:
        return ("metric / cache_teacher_logits: a decoder's student keeps the last step, and its teacher runs at "
                "every step (a vocabulary of logits per token is too large to cache); leave both unset")
    if cfg.collapse_min is not None:  # the distill stage adds that gate unless told not to
        return NO_CLASSES
    return None


RECIPES = (
    Recipe("finetune", "prompts", "tokens", "lifecycle.workloads.decoders.model:finetune",
           frozenset({*GENERATION_METRICS, "data_wait_fraction", *LATENCY_SETTINGS}),
           "a causal LM on response tokens only, full or LoRA; perplexity and ROUGE-L before and after",
           refuses=finetune_refuses),
    Recipe("distill", "prompts", "tokens", "lifecycle.workloads.decoders.distillation:distill",
           frozenset({*DISTILL_METRICS, "data_wait_fraction", *LATENCY_SETTINGS}),
           "a shallower decoder on the teacher's token logits; perplexity ratio, agreement, speedup",
           refuses=distill_refuses),
)
