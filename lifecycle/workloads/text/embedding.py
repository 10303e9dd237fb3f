"""Text embeddings: an encoder plus its pooling (and normalisation), one vector per text.

Graph: `embeddings` (batch, hidden size), float32, pooling inside the graph (lifecycle.embedding);
edge method `embed`; route POST /embed. Export reads an encoder (or a masked-LM's encoder body).
Scores: kNN label accuracy on the task's labelled source and, with scored pairs, Spearman;
fidelity: per-text cosine to the fp32 reference, also on the whole test split at export (a graph's
only other check is parity on a few texts). optimum cannot export it: its feature-extraction graph
leaves the pooling out.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.embedding import EMBEDDING_METRICS, FIDELITY_METRICS
from lifecycle.tasks import TEXT, VECTOR, Artifacts, Edge, Task


def torch_model(src: Path):
    from transformers import AutoModel

    from lifecycle import models
    from lifecycle.embedding import embedding_model, read_pooling

    body = models.load_model(AutoModel, src).eval()
    return embedding_model(body, read_pooling(src)).eval()


def reference(model, tokenizer, texts, task, batch_size=64):
    from lifecycle.components.inference import embed_torch

    return embed_torch(model, tokenizer, texts, task.max_length, batch_size)


def score(predictor, scoring):
    from lifecycle.embedding import fidelity, task_metrics

    x = predictor.embed(scoring.rows["text"])
    metrics = task_metrics(predictor.embed, scoring.pipeline, test_embeddings=x, split=scoring.split, data=scoring.data)
    if scoring.reference is not None:
        metrics.update(fidelity(scoring.reference, x))
    return metrics, x


def encoder_scores(embed, pipeline) -> dict:
    from lifecycle.embedding import task_metrics

    return task_metrics(embed, pipeline)


TASK = Task(
    name="embedding", inputs=TEXT, answers=VECTOR, scores=EMBEDDING_METRICS, fidelity=FIDELITY_METRICS,
    artifacts=Artifacts(("encoder", "masked-lm"), "onnx-encoder", trained_by="pretrain or adapt with `objective: contrastive`",
                        export_hint="an embedding export reads an encoder (pretrain or adapt with `objective: contrastive`)"),
    edge=Edge("embed", "/embed"), torch_model=torch_model, reference=reference, score=score,
    split_free=("spearman",),  # computed on the scored pairs file, whatever the split
    encoder_scores=encoder_scores)
