"""Text embeddings: an encoder plus its pooling (and normalisation), one vector per text.

Graph: `embeddings` (batch, hidden size), float32, pooling inside the graph (lifecycle.embedding);
edge method `embed`; route POST /embed. Export reads an encoder (or a masked-LM's encoder body).
Scores: kNN label accuracy on the task's labelled source and, with scored pairs, Spearman;
fidelity: per-text cosine to the fp32 reference, also on the whole test split at export (a graph's
only other check is parity on a few texts).
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.embedding import EMBEDDING_METRICS, FIDELITY_METRICS
from lifecycle.tasks.base import EmbeddingAnswers, TaskPlugin


class Embedding(EmbeddingAnswers, TaskPlugin):
    name = "embedding"
    inputs_kind, answers_kind = "text", "vector"
    export_reads = ("encoder", "masked-lm")
    export_hint = "an embedding export reads an encoder (pretrain or adapt with `objective: contrastive`)"
    trained_by = "pretrain or adapt with `objective: contrastive`"
    onnx_holds = "onnx-encoder"
    output = "embeddings"
    edge_method = "embed"
    route = "/embed"
    scores = EMBEDDING_METRICS
    fidelity = FIDELITY_METRICS
    split_free = ("spearman",)  # computed on the scored pairs file, whatever the split
    fidelity_at_export = True
    optimum_task = None  # optimum's feature-extraction graph leaves the pooling out

    def torch_model(self, src: Path):
        from transformers import AutoModel

        from lifecycle import models
        from lifecycle.embedding import embedding_model, read_pooling

        body = models.load_model(AutoModel, src).eval()
        return embedding_model(body, read_pooling(src)).eval()

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.components.inference import embed_torch

        return embed_torch(model, tokenizer, texts, max_length, batch_size)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.embedding import fidelity, task_metrics

        x = predictor.embed(rows["text"])
        metrics = task_metrics(predictor.embed, pipeline, test_embeddings=x, split=split)
        if reference is not None:
            metrics.update(fidelity(reference, x))
        return metrics, x

    def encoder_scores(self, embed, pipeline) -> dict:
        from lifecycle.embedding import task_metrics

        return task_metrics(embed, pipeline)


TASK = Embedding()
