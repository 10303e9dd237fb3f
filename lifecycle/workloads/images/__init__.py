"""The images wing: classification and embeddings of images with a small vision transformer (transformers'
ViT from a config; its preprocessing in preprocessor_config.json), pre-trained by masked-image modelling
(SimMIM) or SimCLR, fine-tuned against an RBF SVM or pixel kNN, distilled into fewer layers."""

from __future__ import annotations

from lifecycle.components.classification import COLLAPSE_METRICS
from lifecycle.components.training import TRAINING_METRICS
from lifecycle.embedding import IMAGE_EMBEDDING_DISTILL, IMAGE_EMBEDDING_TRAINING
from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.evaluation.latency import LATENCY_SETTINGS, TORCH_LATENCY, latency_metrics
from lifecycle.tasks.base import own_distill_problem, own_recipe_problem
from lifecycle.workloads import Recipe
from lifecycle.workloads.images import classification, embedding
from lifecycle.workloads.images.evaluation import IMAGE_CONTRASTIVE_METRICS, MASKED_IMAGE_METRICS

TASKS = (classification.TASK, embedding.TASK)

SCORES = CLASS_SCORES
TIMED = (*TORCH_LATENCY, *latency_metrics("torch", "b32_"))  # batch 1 and batch 32
MEASURED = (*TIMED, *LATENCY_SETTINGS)
FINETUNE = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"baseline_svm_{m}" for m in SCORES),
                      *(f"control_{m}" for m in SCORES), "pretraining_gain", *TRAINING_METRICS, *MEASURED,
                      *COLLAPSE_METRICS})
DISTILL = frozenset({*SCORES, *(f"val_{m}" for m in SCORES), *(f"teacher_{m}" for m in (*SCORES, *TIMED)),
                     "retention", "speedup", "compression", "teacher_params_total", "teacher_size_mb",
                     *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})
# the kNN votes' collapse metrics too (the stages' default collapse gate applies to an embedder)
EMBEDDER_FINETUNE = frozenset({*IMAGE_EMBEDDING_TRAINING, "pretraining_gain", *TRAINING_METRICS, *MEASURED,
                               *COLLAPSE_METRICS})
EMBEDDER_DISTILL = frozenset({*IMAGE_EMBEDDING_DISTILL, *(f"teacher_{m}" for m in TIMED), "retention", "speedup", "compression",
                              "teacher_params_total", "teacher_size_mb", *TRAINING_METRICS, *MEASURED, *COLLAPSE_METRICS})


def finetune_refuses(task: str, baseline: str):
    return lambda cfg, sources: own_recipe_problem(cfg, task, baseline, "an image model", lora=True)


# settings SimCLR on images has no use for: the stage's own text-only fields, and `contrastive:`'s but its temperature
TEXT_ONLY = {"pretrain": ("block_size", "mlm_probability", "num_proc", "probe"),
             "adapt": ("block_size", "mlm_probability", "num_proc", "head_warmup_steps", "head_warmup_lr")}
CONTRASTIVE_TEXT_ONLY = ("mode", "max_length", "pairs", "validation", "eval_texts", "pooling", "corruption")


def simclr_refuses(cfg, sources) -> str | None:
    """Refused rather than ignored: token, pair and text-probe settings mean nothing to SimCLR on images, whose
    probe reads the image source's own labels; and two views of an image need augmentation to differ."""
    given = next((f for f in TEXT_ONLY[cfg.kind] if f in cfg.model_fields_set), None) or next(
        (f"contrastive.{f}" for f in CONTRASTIVE_TEXT_ONLY if cfg.contrastive and f in cfg.contrastive.model_fields_set),
        None)
    if given:
        return (f"{given}: does not apply to images; `objective: contrastive` on an image source takes "
                "`contrastive.temperature` (and `train`)")
    source = sources["data"]
    if source.image is None or source.image.augment.off:
        return (f"data: '{cfg.data}' has no augmentation, so both views of an image would be the same pixels; "
                "set its `image.augment` (e.g. {translate: 1, crop_scale: [0.85, 1.0]} for small digits)")
    return None


def embedder_distill_refuses(cfg, sources) -> str | None:
    if "temperature" in cfg.model_fields_set:
        return ("temperature: softens a classifier's logits; an image embedder's student matches the teacher's "
                "embeddings by cosine (`alpha` weighs that against the contrastive loss)")
    return own_distill_problem(cfg, "image-embedding")


CONTRASTIVE = "lifecycle.workloads.images.contrastive"
SIMCLR = frozenset({*IMAGE_CONTRASTIVE_METRICS, "data_wait_fraction"})
RECIPES = (
    Recipe("pretrain", "images", "masked-image", "lifecycle.workloads.images.masked:pretrain",
           frozenset({*MASKED_IMAGE_METRICS, "data_wait_fraction"}), "SimMIM: reconstruct masked patches; a linear probe before and after"),
    Recipe("pretrain", "images", "contrastive", f"{CONTRASTIVE}:pretrain", SIMCLR,
           "SimCLR on two augmented views; a linear probe before and after", refuses=simclr_refuses),
    Recipe("adapt", "images", "contrastive", f"{CONTRASTIVE}:adapt", SIMCLR,
           "SimCLR continued from an image model", refuses=simclr_refuses),
    Recipe("finetune", "images", "labels", "lifecycle.workloads.images.model:finetune", FINETUNE,
           "an image classifier (ViT), full or LoRA; control and RBF-SVM baseline",
           refuses=finetune_refuses("image-classification", "RBF SVM")),
    Recipe("finetune", "images", "vector", "lifecycle.workloads.images.embedder:finetune", EMBEDDER_FINETUNE,
           "an image embedder: contrastive on augmented views, full or LoRA; kNN accuracy and pixel-kNN baseline",
           refuses=finetune_refuses("image-embedding", "pixel kNN")),
    Recipe("distill", "images", "labels", "lifecycle.workloads.images.model:distill", DISTILL,
           "fewer ViT layers on the teacher's soft targets plus the labels",
           refuses=lambda cfg, sources: own_distill_problem(cfg, "image-classification")),
    Recipe("distill", "images", "vector", "lifecycle.workloads.images.embedder:distill", EMBEDDER_DISTILL,
           "fewer ViT layers matching the teacher's embeddings by cosine", refuses=embedder_distill_refuses),
)
