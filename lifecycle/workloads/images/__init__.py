"""The images wing: classification and embeddings of images with a small vision transformer (transformers'
ViT from a config; its preprocessing in preprocessor_config.json), pre-trained by masked-image modelling
(SimMIM) or SimCLR, fine-tuned against an RBF SVM or pixel kNN, distilled into fewer layers."""

from __future__ import annotations

from lifecycle.components.classification import COLLAPSE_METRICS
from lifecycle.components.training import TRAINING_METRICS
from lifecycle.embedding import IMAGE_EMBEDDING_DISTILL, IMAGE_EMBEDDING_TRAINING
from lifecycle.evaluation.images import IMAGE_CONTRASTIVE_METRICS, MASKED_IMAGE_METRICS
from lifecycle.evaluation.latency import LATENCY_SETTINGS, TORCH_LATENCY, latency_metrics
from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.base import own_distill_problem, own_recipe_problem
from lifecycle.workloads import Recipe
from lifecycle.workloads.images import classification, embedding

TASKS = (classification.TASK, embedding.TASK)

SCORES = TABLE_CLASSIFICATION
TIMED = (*TORCH_LATENCY, *latency_metrics("torch", "b32_"))  # batch 1 and batch 32
MEASURED = (*TIMED, *LATENCY_SETTINGS)
FINETUNE = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"baseline_svm_{m}" for m in SCORES),
                      *(f"control_{m}" for m in SCORES), "pretraining_gain", *TRAINING_METRICS, *MEASURED,
                      *COLLAPSE_METRICS})
DISTILL = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"teacher_{m}" for m in (*SCORES, *TIMED)),
                     "retention", "speedup", "compression", "teacher_params_total", "teacher_size_mb",
                     *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})
# the kNN votes' collapse metrics too (the stages' default collapse gate applies to an embedder)
EMBEDDER_FINETUNE = frozenset({*IMAGE_EMBEDDING_TRAINING, *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})
EMBEDDER_DISTILL = frozenset({*IMAGE_EMBEDDING_DISTILL, *(f"teacher_{m}" for m in TIMED), "retention", "speedup", "compression",
                              "teacher_params_total", "teacher_size_mb", *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})


def finetune_refuses(task: str, baseline: str):
    return lambda cfg: own_recipe_problem(cfg, task, baseline, "an image model", lora=True)


def embedder_distill_refuses(cfg) -> str | None:
    if "temperature" in cfg.model_fields_set:
        return ("temperature: softens a classifier's logits; an image embedder's student matches the teacher's "
                "embeddings by cosine (`alpha` weighs that against the contrastive loss)")
    return own_distill_problem(cfg, "image-embedding")


CONTRASTIVE = "lifecycle.workloads.images.contrastive"
RECIPES = (
    Recipe("pretrain", "images", "masked-image", "lifecycle.workloads.images.masked:pretrain",
           frozenset({*MASKED_IMAGE_METRICS, "data_wait_fraction"}), "SimMIM: reconstruct masked patches; a linear probe before and after"),
    Recipe("pretrain", "images", "contrastive", f"{CONTRASTIVE}:pretrain", frozenset(IMAGE_CONTRASTIVE_METRICS),
           "SimCLR on two augmented views; a linear probe before and after"),
    Recipe("adapt", "images", "contrastive", f"{CONTRASTIVE}:adapt", frozenset(IMAGE_CONTRASTIVE_METRICS),
           "SimCLR continued from an image model"),
    Recipe("finetune", "images", "labels", "lifecycle.workloads.images.model:finetune", FINETUNE,
           "an image classifier (ViT), full or LoRA; control and RBF-SVM baseline",
           refuses=finetune_refuses("image-classification", "RBF SVM")),
    Recipe("finetune", "images", "vector", "lifecycle.workloads.images.embedder:finetune", EMBEDDER_FINETUNE,
           "an image embedder: contrastive on augmented views, full or LoRA; kNN accuracy and pixel-kNN baseline",
           refuses=finetune_refuses("image-embedding", "pixel kNN")),
    Recipe("distill", "images", "labels", "lifecycle.workloads.images.model:distill", DISTILL,
           "fewer ViT layers on the teacher's soft targets plus the labels",
           refuses=lambda cfg: own_distill_problem(cfg, "image-classification")),
    Recipe("distill", "images", "vector", "lifecycle.workloads.images.embedder:distill", EMBEDDER_DISTILL,
           "fewer ViT layers matching the teacher's embeddings by cosine", refuses=embedder_distill_refuses),
)
