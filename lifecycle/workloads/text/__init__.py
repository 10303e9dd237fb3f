"""The text wing: classification and embeddings of text (tokenizer ids in), and the language-model and
contrastive recipes that pre-train and adapt text encoders and decoders."""

from __future__ import annotations

from lifecycle.components.classification import COLLAPSE_METRICS, VAL_METRICS
from lifecycle.components.language_model import LM_METRICS
from lifecycle.components.training import TRAINING_METRICS
from lifecycle.data.corpus import STAT_KEYS
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.evaluation.latency import LATENCY_SETTINGS, TORCH_LATENCY
from lifecycle.workloads import Recipe
from lifecycle.workloads.text import classification, embedding
from lifecycle.workloads.text.contrastive import CONTRASTIVE_METRICS

TASKS = (classification.TASK, embedding.TASK)

PRETRAIN = frozenset({*LM_METRICS, "unigram_perplexity", "perplexity_vs_unigram", "probe_accuracy"})
ADAPT = frozenset({*LM_METRICS, "perplexity_before", "domain_perplexity_gain", "general_perplexity",
                   "general_perplexity_before", "general_perplexity_change", "head_added", "probe_accuracy",
                   "probe_accuracy_before", "adaptation_probe_gain"})
FINETUNE = frozenset({*CLASSIFICATION, *VAL_METRICS, *TORCH_LATENCY, *LATENCY_SETTINGS, *TRAINING_METRICS, *COLLAPSE_METRICS,
                      *(f"control_{m}" for m in CLASSIFICATION), "pretraining_gain",
                      *(f"baseline_tfidf_{m}" for m in CLASSIFICATION)})
DISTILL = frozenset({*CLASSIFICATION, *VAL_METRICS, *TORCH_LATENCY, *LATENCY_SETTINGS, *TRAINING_METRICS, *COLLAPSE_METRICS,
                     *(f"teacher_{m}" for m in (*CLASSIFICATION, *TORCH_LATENCY, "params_total", "size_mb")),
                     "retention", "speedup", "compression", "teacher_params_total"})
LM = "lifecycle.workloads.text.language_model"
CONTRASTIVE = "lifecycle.workloads.text.contrastive"

RECIPES = (
    Recipe("pretrain", "text", "mlm", f"{LM}:pretrain", PRETRAIN,
           "masked-LM from scratch (bert-* presets), a WordPiece tokenizer trained on the corpus"),
    Recipe("pretrain", "text", "clm", f"{LM}:pretrain", PRETRAIN,
           "causal-LM from scratch (gpt-* presets), a byte-level BPE tokenizer trained on the corpus"),
    Recipe("pretrain", "text", "contrastive", f"{CONTRASTIVE}:pretrain",
           frozenset({*CONTRASTIVE_METRICS, *STAT_KEYS, "vocab_size"}),
           "a sentence encoder from scratch with InfoNCE (SimCSE, or scored pairs)"),
    Recipe("adapt", "text", "mlm", f"{LM}:adapt", ADAPT,
           "continued masked-LM pre-training, perplexity before and after on domain and general text"),
    Recipe("adapt", "text", "clm", f"{LM}:adapt", ADAPT,
           "continued causal-LM pre-training, perplexity before and after on domain and general text"),
    Recipe("adapt", "text", "contrastive", f"{CONTRASTIVE}:adapt", frozenset(CONTRASTIVE_METRICS),
           "an encoder continued as a sentence-embedding model (InfoNCE)"),
    Recipe("finetune", "text", "labels", "lifecycle.workloads.text.classifier:finetune", FINETUNE,
           "a sequence classifier, full or LoRA, best checkpoint on validation; control and TF-IDF baseline"),
    Recipe("distill", "text", "labels", "lifecycle.workloads.text.distillation:distill", DISTILL,
           "a shallower student on the teacher's soft targets (+ hidden states); retention and speedup"),
)
