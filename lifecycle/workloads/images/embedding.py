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
from lifecycle.tasks.base import EmbeddingAnswers
from lifecycle.workloads.images.task import ImageTask


class ImageEmbedding(EmbeddingAnswers, ImageTask):
    name = "image-embedding"
    inputs_kind, answers_kind = "images", "vector"
    export_reads = ("encoder", "masked-lm")
    export_hint = ("an image-embedding export reads an image encoder: a finetune or distill stage under this task, or a "
                   "pretrain stage with `objective: masked-image`")
    trained_by = ("finetune (contrastive on augmented views, full or LoRA), distill (a shallower student matching "
                  "the teacher's embeddings), or pretrain with `objective: masked-image`")
    onnx_holds = "onnx-encoder"
    output = "embeddings"
    edge_method = "embed_images"
    route = "/embed_image"
    scores = ("knn_accuracy",)
    fidelity = FIDELITY_METRICS
    fidelity_at_export = True
    finetunes_into = "encoder"
    settings_key = "embedding"  # scored as text embeddings are: `task.embedding` (k, limit)

    def settings_problem(self, task) -> str | None:
        if task.embedding is not None and task.embedding.pairs is not None:
            return "embedding.pairs: scored text pairs do not apply to image embeddings (kNN accuracy only)"
        return None

    def knn_metrics(self, embed, train, rows, settings, test_x=None):
        """({"knn_accuracy"}, the kNN label per scored image) of the embeddings `embed(images)` makes: the
        `rows` images against the `train` images (ImageSplits), at most `settings.limit` of each. `test_x`:
        the rows' embeddings when already computed; a None among them (a request that got no answer) is
        scored wrong."""
        import numpy as np

        from lifecycle.embedding import knn_predictions

        n = settings.limit or max(len(train), len(rows))
        test_x = embed(self.inputs(rows)[:n]) if test_x is None else test_x[:n]
        answered = [i for i, x in enumerate(test_x) if x is not None]
        predicted = [None] * len(test_x)
        if answered:
            found = knn_predictions(embed(self.inputs(train)[:n]), train.labels[:n],
                                    np.asarray([test_x[i] for i in answered], dtype=np.float32), settings.k)
            for i, label in zip(answered, found):
                predicted[i] = label
        right = sum(p == y for p, y in zip(predicted, rows.labels[:n]))
        return {"knn_accuracy": right / max(len(test_x), 1)}, predicted

    # --------------------------------------------------------------------------------- the graph
    def torch_model(self, src: Path):
        from lifecycle.workloads.images.embedder import load

        return load(src)

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.workloads.images.embedder import embed

        return embed(model, tokenizer.transform(list(texts)), batch_size)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.data import load
        from lifecycle.embedding import fidelity

        x = predictor.embed_images(self.inputs(rows))
        train = load(pipeline.data[pipeline.task.data], pipeline).splits["train"]
        metrics = self.knn_metrics(predictor.embed_images, train, rows, pipeline.task.embedding_settings, x)[0]
        if reference is not None:
            metrics.update(fidelity(reference, x))
        return metrics, x

    # ----------------------------------------------------------------------------------- serving
    def served_scores(self, answers, ctx, predictor) -> dict:
        """kNN accuracy of the HTTP embeddings of the test images against the in-process embeddings of the
        training images (a request that got no answer: wrong by construction)."""
        data = ctx.task_data()
        return self.knn_metrics(predictor.embed_images, data.splits["train"], data.splits["test"],
                                ctx.pipeline.task.embedding_settings, answers)[0]


TASK = ImageEmbedding()
