"""Image embeddings for similarity search: the vision transformer of lifecycle.workloads.images.model without a head, its
states pooled into one vector per image (lifecycle.workloads.images.embedder), scored as text embeddings are.

Graph: input `pixel_values` as for image classification (lifecycle.workloads.images.task); output `embeddings`
(batch, hidden size) float32, pooling and normalisation inside the graph (pooling.json of the model).
Edge method `embed_images`; route POST /embed_image (the bodies, limits and refusals of /classify_image).
Export reads the encoder of an image-embedding finetune or distill, or a masked-image pre-training's encoder
as it is. The finetune and distill recipes are lifecycle.workloads.images.embedder's.
Scores: kNN label accuracy (each test image takes the majority label of its k cosine-nearest training
images; `task.embedding.k`, `limit`), as lifecycle.embedding computes it for texts; fidelity: per-image
cosine to the fp32 reference, also on the whole test split at export. The serve stage scores the HTTP
embeddings by the same kNN against the in-process embeddings of the training images.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.embedding import FIDELITY_METRICS
from lifecycle.tasks import VECTOR, Artifacts, Edge, Settings, Task
from lifecycle.workloads.images.task import IMAGES


def settings_problem(task) -> str | None:
    if task.embedding is not None and task.embedding.pairs is not None:
        return "embedding.pairs: scored text pairs do not apply to image embeddings (kNN accuracy only)"
    return None


def torch_model(src: Path):
    from lifecycle.workloads.images.embedder import load

    return load(src)


def reference(model, preprocessing, images, task=None, batch_size=64):
    from lifecycle.workloads.images.embedder import embed

    return embed(model, preprocessing.transform(list(images)), batch_size)


def score(predictor, scoring):
    """kNN accuracy against the loaded data's training images (nothing is read again), and the fidelity."""
    from lifecycle.embedding import fidelity
    from lifecycle.workloads.images.embedder import knn_metrics

    rows = scoring.rows
    x = predictor.embed_images(IMAGES(rows))
    metrics = knn_metrics(predictor.embed_images, scoring.data.splits["train"], rows,
                          scoring.pipeline.task.embedding_settings, x)[0]
    if scoring.reference is not None:
        metrics.update(fidelity(scoring.reference, x))
    return metrics, x


def served_scores(answers, predictor, scoring) -> dict:
    """kNN accuracy of the HTTP embeddings of the test images against the in-process embeddings of the
    training images (a request that got no answer: wrong by construction)."""
    from lifecycle.workloads.images.embedder import knn_metrics

    return knn_metrics(predictor.embed_images, scoring.data.splits["train"], scoring.rows,
                       scoring.pipeline.task.embedding_settings, answers)[0]


TASK = Task(
    name="image-embedding", inputs=IMAGES, answers=VECTOR, scores=("knn_accuracy",), fidelity=FIDELITY_METRICS,
    artifacts=Artifacts(
        ("encoder", "masked-lm"), "onnx-encoder", finetunes_into="encoder",
        export_hint=("an image-embedding export reads an image encoder: a finetune or distill stage under this task, "
                     "or a pretrain stage with `objective: masked-image`"),
        trained_by=("finetune (contrastive on augmented views, full or LoRA), distill (a shallower student matching "
                    "the teacher's embeddings), or pretrain with `objective: masked-image`")),
    edge=Edge("embed_images", "/embed_image"), torch_model=torch_model, reference=reference, score=score,
    served_scores=served_scores,
    settings=Settings("embedding", settings_problem))  # scored as text embeddings are: `task.embedding` (k, limit)
