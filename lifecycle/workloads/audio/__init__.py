"""The audio wing: spoken-word classification with a small audio spectrogram transformer (transformers' AST
from a config; its log-mel features in preprocessor_config.json), pre-trained and adapted by masked-spectrogram
modelling, fine-tuned (full or LoRA) against an MFCC baseline, distilled into fewer layers."""

from __future__ import annotations

from lifecycle.components.classification import COLLAPSE_METRICS
from lifecycle.components.training import TRAINING_METRICS
from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.evaluation.latency import LATENCY_SETTINGS, TORCH_LATENCY, latency_metrics
from lifecycle.tasks.base import own_distill_problem, own_recipe_problem
from lifecycle.workloads import Recipe
from lifecycle.workloads.audio import task
from lifecycle.workloads.audio.evaluation import MASKED_METRICS

TASKS = (task.TASK,)

SCORES = CLASS_SCORES
TIMED = (*TORCH_LATENCY, *latency_metrics("torch", "b16_"))  # batch 1 and batch 16
MEASURED = (*TIMED, *LATENCY_SETTINGS)
FINETUNE = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"baseline_mfcc_{m}" for m in SCORES),
                      *(f"control_{m}" for m in SCORES), "pretraining_gain", *TRAINING_METRICS, *MEASURED,
                      *COLLAPSE_METRICS})
DISTILL = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"teacher_{m}" for m in (*SCORES, *TIMED)),
                     "retention", "speedup", "compression", "teacher_params_total", "teacher_size_mb",
                     *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})
MASKED = frozenset({*MASKED_METRICS, "data_wait_fraction"})
# a language model's settings, which masked-spectrogram modelling has no use for
TEXT_ONLY = ("block_size", "num_proc", "probe", "contrastive", "general_data", "head_warmup_steps", "head_warmup_lr")


def masked_refuses(cfg, sources) -> str | None:
    given = next((f for f in TEXT_ONLY if f in cfg.model_fields_set), None)
    if given:
        return (f"{given}: does not apply to audio; `objective: masked-spectrogram` takes `mlm_probability` (the "
                "share of patches masked), `model` and `train`, and probes the task's own clips")
    return None


MASKED_RECIPE = "lifecycle.workloads.audio.masked"
MODEL = "lifecycle.workloads.audio.model"
RECIPES = (
    Recipe("pretrain", "audio", "masked-spectrogram", f"{MASKED_RECIPE}:pretrain", MASKED,
           "SSAST-style: reconstruct masked spectrogram patches; a linear probe before and after",
           refuses=masked_refuses),
    Recipe("adapt", "audio", "masked-spectrogram", f"{MASKED_RECIPE}:adapt", MASKED,
           "masked-spectrogram modelling continued on other speech (a pretrain stage's model)", refuses=masked_refuses),
    Recipe("finetune", "audio", "labels", f"{MODEL}:finetune", FINETUNE,
           "a spoken-word classifier (AST), full or LoRA; control and MFCC baseline",
           refuses=lambda cfg, sources: own_recipe_problem(cfg, "audio-classification", "MFCC", "an audio model",
                                                           lora=True)),
    Recipe("distill", "audio", "labels", f"{MODEL}:distill", DISTILL,
           "fewer AST layers on the teacher's soft targets plus the labels",
           refuses=lambda cfg, sources: own_distill_problem(cfg, "audio-classification")),
)
