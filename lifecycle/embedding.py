"""The embedding task: pooling that travels with the model, and how embeddings are scored.

An embedding model is an encoder plus a pooling rule (mean over non-padding tokens, or the [CLS]
token) and optional L2 normalisation. Both are part of the artifact: `pooling.json` beside the
weights of an hf-model, and nodes inside the graph of an onnx-model, so every consumer (PyTorch
metrics, the ONNX export, the edge bundle, the server) embeds a text the same way.

Metrics (fractions 0..1 like accuracy, so gates read them the same way):
- `knn_accuracy`: each test text of the task's labelled source takes the majority label of its k
  most cosine-similar *train* texts. A probe of embedding quality with no trained head.
- `spearman`: with `task.embedding.pairs` (scored pairs), Spearman rank correlation between the
  cosine of each pair and its score.
- `embedding_cosine_min` / `_mean`: fidelity of an exported or quantized model, per-text cosine
  to the fp32 reference on the test texts.
- `alignment` / `uniformity` (Wang & Isola 2020), reported by the contrastive objective.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lifecycle.schema import Pairs, Strict, unset

POOLING_FILE = "pooling.json"
EMBEDDING_METRICS = ("knn_accuracy", "spearman")
FIDELITY_METRICS = ("embedding_cosine_min", "embedding_cosine_mean")
# what an image-embedding finetune reports besides the finetune stage's own (lifecycle.workloads.images.embedder)
IMAGE_EMBEDDING_TRAINING = ("knn_accuracy", "val_knn_accuracy", "knn_accuracy_before", "knn_accuracy_gain",
                            "baseline_pixels_knn_accuracy", "temperature", "control_knn_accuracy")
# what an image-embedding distill reports besides the distill stage's own
IMAGE_EMBEDDING_DISTILL = ("knn_accuracy", "val_knn_accuracy", "teacher_knn_accuracy", "teacher_cosine_mean")


class Pooling(Strict):
    """How token states become one vector; written to the artifact as pooling.json."""

    mode: Literal["mean", "cls"] = "mean"  # mean: robust default for sentence encoders; cls: BERT-style models
    normalize: bool = True  # unit length: a dot product is then the cosine (what kNN and retrieval use)


def read_pooling(model_dir: Path) -> Pooling:
    """pooling.json; else a sentence-transformers folder's own config (1_Pooling, Normalize); else mean + L2."""
    return declared_pooling(model_dir) or Pooling()


def declared_pooling(model_dir: Path) -> Pooling | None:
    """The pooling a model directory declares (pooling.json, or a sentence-transformers 1_Pooling); None
    when it declares none (a plain transformers checkpoint)."""
    model_dir = Path(model_dir)
    if (model_dir / POOLING_FILE).is_file():
        return Pooling.model_validate_json((model_dir / POOLING_FILE).read_text())
    st_pool = model_dir / "1_Pooling" / "config.json"
    if st_pool.is_file():
        cfg = json.loads(st_pool.read_text())
        mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        modules = model_dir / "modules.json"
        names = [m.get("type", "") for m in json.loads(modules.read_text())] if modules.is_file() else []
        return Pooling(mode=mode, normalize=any(n.endswith("Normalize") for n in names))
    return None


def write_pooling(model_dir: Path, pooling: Pooling) -> None:
    (Path(model_dir) / POOLING_FILE).write_text(pooling.model_dump_json(indent=2))


# ------------------------------------------------------------------------------------------- PyTorch
def pool(hidden, attention_mask, pooling: Pooling):
    """(batch, seq, dim) token states -> (batch, dim). Written with plain tensor ops so torch.onnx puts
    the same computation into the graph."""
    import torch.nn.functional as F

    if pooling.mode == "cls":
        out = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(out, p=2.0, dim=-1) if pooling.normalize else out


def info_nce(anchors, candidates, temperature: float, positives=None):
    """Mean cross-entropy of each anchor against all candidates; anchor i's positive is candidate i. With
    `positives` (a bool matrix, anchors x candidates; each row holds at least one), every candidate marked in
    an anchor's row is a positive and the loss is the mean of their log-probabilities (SupCon, Khosla et al.
    2020): same-label examples of the batch stop being pushed apart as negatives."""
    import torch
    import torch.nn.functional as F

    a, c = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    logits = (a @ c.T / temperature).float()
    if positives is None:
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
    positives = positives.to(logits.dtype)
    return -((logits.log_softmax(-1) * positives).sum(-1) / positives.sum(-1)).mean()


def retrieval_scores(anchors, positives, temperature: float, batch_size: int) -> dict[str, float]:
    """Held-out scores of a two-view objective on (n, dim) embeddings, in batches of `batch_size` as training
    sees them: the mean InfoNCE loss and the share of anchors whose most similar candidate in their batch is
    their own positive (`contrastive_top1`), each beside its chance level (log b and 1/b for a batch of b: a
    model that cannot tell examples apart). A last batch of one is skipped: it has no negative."""
    import math

    import torch
    import torch.nn.functional as F

    sums = dict.fromkeys(("contrastive_loss", "contrastive_loss_chance", "contrastive_top1",
                          "contrastive_top1_chance"), 0.0)
    seen = 0
    for start in range(0, len(anchors), batch_size):
        a, p = anchors[start : start + batch_size], positives[start : start + batch_size]
        b = len(a)
        if b < 2:
            continue
        nearest = (F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).T).argmax(-1)
        sums["contrastive_loss"] += float(info_nce(a, p, temperature)) * b
        sums["contrastive_loss_chance"] += math.log(b) * b
        sums["contrastive_top1"] += float((nearest == torch.arange(b, device=a.device)).sum())
        sums["contrastive_top1_chance"] += 1.0
        seen += b
    return {k: v / max(1, seen) for k, v in sums.items()}


# ------------------------------------------------------------------------------ classifier head pooling
# A sequence classifier (BertForSequenceClassification...) feeds its head the pooler's view of the
# [CLS] state. An encoder trained for mean pooling (all-MiniLM-L6-v2 and most sentence-transformers)
# never trained that state nor the pooler, so a head on it learns next to nothing unless the whole
# encoder moves (full fine-tuning); LoRA collapses to the majority class. With `head_pooling: mean` in
# the model's config, the pooler reads the masked mean of the token states instead of [CLS] (its
# dense + tanh stay: they are trained as part of the head). The config key travels in config.json and
# `apply_head_pooling` is applied wherever a classifier is built (lifecycle.models.load_model, from_config
# sites), so PyTorch metrics, the ONNX graph (torch.onnx traces the hook) and later stages agree.
HEAD_POOLING_KEY = "head_pooling"


def pooler_path(model) -> str | None:
    """Dotted name of the BERT-style pooler (dense + activation over one token) the classifier head
    reads, e.g. "bert.pooler"; None for architectures whose head pools by itself (RoBERTa, GPT-2...)."""
    base = getattr(model, "base_model", None)
    pooler = getattr(base, "pooler", None)
    if pooler is None or not hasattr(pooler, "dense") or base is model:
        return None
    return f"{model.base_model_prefix}.pooler"


def apply_head_pooling(model):
    """Make the classifier's pooler read the masked token mean when the config says `head_pooling: mean`
    (idempotent; a no-op for other models). Returns the model."""
    if getattr(model.config, HEAD_POOLING_KEY, None) != "mean" or pooler_path(model) is None:
        return model
    base = model.base_model
    if getattr(base, "_lifecycle_mean_head", False):
        return model

    def mean_pooled(module, args, kwargs, output):
        # The pooler is looked up at call time: under peft it is the trainable copy (modules_to_save).
        hidden = output[0]
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        if mask is None:
            mask = hidden.new_ones(hidden.shape[:2])
        pooled = module.pooler(pool(hidden, mask, Pooling(mode="mean", normalize=False)).unsqueeze(1))
        if isinstance(output, tuple):
            return (output[0], pooled, *output[2:])
        output["pooler_output"] = pooled
        return output

    base.register_forward_hook(mean_pooled, with_kwargs=True)
    base._lifecycle_mean_head = True
    return model


def embedding_model(body, pooling: Pooling):
    """An nn.Module: encoder body + pooling (+ normalisation), returning (batch, dim) embeddings."""
    import torch

    class EmbeddingModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.config = body.config
            self.pooling = pooling

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            return pool(hidden, attention_mask, pooling)

    return EmbeddingModel()


# ------------------------------------------------------------------------------------------- metrics
def _unit(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predictions(train_x, train_y, test_x, k: int):
    """Majority label of the k cosine-nearest train embeddings (scikit-learn, brute force), per test embedding."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine", algorithm="brute")
    return knn.fit(train_x, train_y).predict(test_x)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int) -> float:
    """Share of test embeddings whose kNN label (knn_predictions) is their own."""
    import numpy as np

    return float(np.mean(knn_predictions(train_x, train_y, test_x, k) == np.asarray(test_y)))


def spearman(a, b, scores) -> float:
    """Spearman correlation between the cosine of each embedding pair and its gold score (scipy)."""
    from scipy.stats import spearmanr

    cos = (_unit(a) * _unit(b)).sum(-1)
    return float(spearmanr(cos, scores).statistic)


def fidelity(reference, got) -> dict[str, float]:
    """Per-text cosine between reference (fp32) and candidate embeddings: min and mean."""
    cos = (_unit(reference) * _unit(got)).sum(-1)
    return {"embedding_cosine_min": float(cos.min()), "embedding_cosine_mean": float(cos.mean())}


def alignment_uniformity(x, y, t: float = 2.0) -> dict[str, float]:
    """Wang & Isola (2020) on unit vectors: alignment = E||f(x) - f(x+)||^2 over positive pairs (lower:
    positives closer); uniformity = log E exp(-t ||f(x) - f(y)||^2) over all pairs of x (lower: spread
    more evenly over the sphere)."""
    import numpy as np

    x, y = _unit(x), _unit(y)
    align = float((np.linalg.norm(x - y, axis=-1) ** 2).mean())
    sq = np.maximum(2 - 2 * x @ x.T, 0)[np.triu_indices(len(x), k=1)]
    return {"alignment": align, "uniformity": float(np.log(np.exp(-t * sq).mean()))}


def task_metrics(embed, pipeline, task=None, test_embeddings=None, split: str = "test", data=None) -> dict[str, float]:
    """kNN label accuracy on the task's labelled source (train -> `split`), and Spearman on its scored
    pairs when given. `embed(texts) -> array`; pass the `split` embeddings when already computed, and the
    source's data when already loaded (a stage's scoring: not read again for every rung)."""
    from lifecycle.data import load

    task = task or pipeline.task
    settings = task.embedding_settings
    data = data if data is not None else load(pipeline.data[task.data], pipeline)
    train, test = data.splits["train"], data.splits[split]
    if settings.limit:
        train = train.select(range(min(settings.limit, len(train))))
        if len(test) > settings.limit:
            test, test_embeddings = test.select(range(settings.limit)), None
    test_x = embed(test["text"]) if test_embeddings is None else test_embeddings
    metrics = {"knn_accuracy": knn_accuracy(embed(train["text"]), train["label"], test_x, test["label"], settings.k),
               "knn_train_texts": len(train), "knn_test_texts": len(test)}
    if settings.pairs is not None:
        pairs = read_pairs(settings.pairs, pipeline)
        if not pairs.get("score"):
            from lifecycle import ConfigError

            raise ConfigError("task.embedding.pairs: Spearman needs scored pairs; set `score_field`")
        metrics["spearman"] = spearman(embed(pairs["text1"]), embed(pairs["text2"]), pairs["score"])
    return metrics


def read_pairs(pairs, pipeline) -> dict[str, list]:
    """{"text1": [...], "text2": [...], "score": [...] | None, "negative": [...] | None}."""
    import csv

    from lifecycle import LifecycleError

    path = pipeline.resolve(pairs.path)
    if not path.is_file():
        raise LifecycleError(f"pairs: no file {path}")
    with open(path, encoding="utf-8", newline="") as fh:
        if pairs.format == "jsonl":
            rows = [json.loads(line) for line in fh if line.strip()]
        else:
            rows = list(csv.DictReader(fh, delimiter="\t" if pairs.format == "tsv" else ","))
    rows = rows[: pairs.limit] if pairs.limit else rows
    fields = {"text1": pairs.text1_field, "text2": pairs.text2_field, "score": pairs.score_field,
              "negative": pairs.negative_field}
    if not rows:
        raise LifecycleError(f"{path}: no pairs")
    out: dict[str, list | None] = {}
    for key, name in fields.items():
        if name is None:
            out[key] = None
            continue
        missing = next((i for i, r in enumerate(rows) if name not in r), None)
        if missing is not None:
            raise LifecycleError(f"{path}: row {missing + 1} has no field '{name}' (fields: {sorted(rows[missing])})")
        out[key] = [float(r[name]) if key == "score" else str(r[name]) for r in rows]
    return out


# ---------------------------------------------------- the contrastive objective's settings (every wing's)
class Contrastive(Strict):
    """Settings of `objective: contrastive` (see the module docstring for the trade-offs)."""

    mode: Literal["unsupervised", "supervised"] = "unsupervised"
    temperature: float = Field(0.05, gt=0, le=1)  # SimCSE's; 0.1-0.2 is gentler on false negatives
    max_length: int = Field(128, gt=0)  # tokens per text while training (longer texts are truncated)
    pairs: Pairs | None = None  # supervised: text1 = anchor, text2 = positive, negative_field = hard negative
    validation: float = Field(0.05, gt=0, lt=1)  # supervised: share of pairs held out (eval_loss, alignment)
    eval_texts: int = Field(256, ge=8)  # held-out texts for alignment / uniformity (uniformity is O(n^2))
    pooling: Pooling | None = None  # None: the start model's (pooling.json or sentence-transformers), else mean
    # tables (SCARF, lifecycle.workloads.tables.contrastive): the share of a row's features replaced by draws from
    # their training marginals; None: SCARF's 0.6.
    corruption: float | None = Field(None, gt=0, lt=1, exclude_if=unset)

    @model_validator(mode="after")
    def _pairs(self) -> Contrastive:
        if (self.mode == "supervised") != (self.pairs is not None):
            raise ValueError("pairs: supervised mode trains on `pairs` (and only it uses them)")
        return self
