"""Image classification: a small vision transformer (lifecycle.images) on the images of an image source
(lifecycle.data.images: imagefolder or sklearn-digits), one class per image.

Graph: input `pixel_values` (batch, channels, height, width) float32, made from an image by
lifecycle.edge.ImagePreprocessing with the model's transformers image-processor config
(preprocessor_config.json beside the graph: size, resample, rescale, mean/std fitted on the training
split); output `logits` (batch, classes). Edge method `classify_images` (encoded PNG/JPEG bytes or uint8
pixels); route POST /classify_image (image/png, image/jpeg, or {"images": [base64, ...]}). Scores:
accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for other classifiers. The finetune and distill
stages train it with the recipes of lifecycle.images; the report shows an RBF SVM beside it.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.base import SAMPLE_PREDICTIONS, ClassAnswers, TaskPlugin, own_recipe_problem
from lifecycle.tasks.table_task import DISTILL_PROBLEMS


class ImageClassification(ClassAnswers, TaskPlugin):
    name = "image-classification"
    export_reads = ("classifier",)
    export_hint = "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-classifier"
    output = "logits"
    edge_method = "classify_images"
    route = "/classify_image"
    scores = TABLE_CLASSIFICATION
    fidelity = ("argmax_agreement", "logit_max_abs_diff")
    argmax_parity = True
    reads = "image"
    graph_fusions = False  # onnxruntime's transformer fusions look for input_ids and a mask
    own_training = True
    request_key = "images"  # {"images": [base64 PNG/JPEG, ...]}

    # ------------------------------------------------------------------------------- training
    def finetune(self, cfg, parent, ctx) -> dict:
        from lifecycle import images

        return images.finetune(cfg, parent, ctx, self)

    def finetune_problem(self, cfg) -> str | None:
        return own_recipe_problem(cfg, self.name, "RBF SVM", "an image model")

    def distill(self, cfg, parent, ctx) -> dict:
        from lifecycle import images

        return images.distill(cfg, parent, ctx, self)

    def distill_problem(self, cfg) -> str | None:
        given = next((f for f, refused in DISTILL_PROBLEMS.items() if refused(cfg)), None)
        return f"{given}: not supported for {self.name} yet" if given else None

    def evaluate(self, outputs, targets) -> dict:
        from lifecycle.evaluation.tables import classification_scores

        return classification_scores(outputs, targets)

    def test_metrics(self, outputs, targets) -> dict:
        from lifecycle.components.classification import collapse_metrics

        return {**self.evaluate(outputs, targets), **collapse_metrics(outputs, targets, outputs.shape[1])}

    # --------------------------------------------------------------------------------- the graph
    def inputs(self, split) -> list:
        """A split's images: uint8 pixels (H, W[, C]) in the source's mode, at their own size."""
        return list(split.images)

    def wire(self, inputs: list) -> list[str]:
        """Images as a request carries them: base64 PNG (lossless: the server sees the same pixels)."""
        return [png_base64(x) for x in inputs]

    def preprocessor(self, src: Path, task):
        from lifecycle.edge import IMAGE_PROCESSOR, ImagePreprocessing

        return ImagePreprocessing.load(src / IMAGE_PROCESSOR)

    def torch_model(self, src: Path):
        from transformers import ViTForImageClassification

        return ViTForImageClassification.from_pretrained(src).eval()

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.images import predict

        return predict(model, tokenizer.transform(list(texts)), batch_size)

    def export_graph(self, model, preprocessor, path, opset):
        from lifecycle.images import export_onnx

        export_onnx(model, preprocessor.transform([preprocessor.blank()] * 2), path, opset, output=self.output)

    def write_runtime_files(self, out, src, preprocessor, task, input_names, model):
        import json
        import shutil

        from lifecycle.edge import IMAGE_PROCESSOR

        for name in (IMAGE_PROCESSOR, "config.json"):
            shutil.copy2(src / name, out / name)
        (out / "labels.json").write_text(json.dumps(self.labels(model)))
        shape = ["batch", model.config.num_channels, model.config.image_size, model.config.image_size]
        schema = {"inputs": {"pixel_values": {"dtype": "float32", "shape": shape}}, "preprocessor": IMAGE_PROCESSOR,
                  **self.graph_schema(model)}
        (out / "schema.json").write_text(json.dumps(schema, indent=2))

    # ----------------------------------------------------------------------------------- samples
    def sample_predictions(self, predictor, texts):
        images = list(texts)
        return [{"image": png_base64(x), "answer": a} for x, a in zip(images, predictor.answers(images))]

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                "sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}

    def split_labels(self, split) -> list:  # scores, targets and served answers: ClassAnswers
        return split.labels


def png_base64(pixels) -> str:
    """uint8 pixels as a base64 PNG (what a client sends; PNG is lossless, so the pixels arrive unchanged)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


TASK = ImageClassification()
