"""Image classification: a small vision transformer (lifecycle.workloads.images.model) on the images of an image source
(lifecycle.data.images: imagefolder or sklearn-digits), one class per image.

Graph: input `pixel_values` (batch, channels, height, width) float32, made from an image by
lifecycle.edge.ImagePreprocessing with the model's transformers image-processor config
(preprocessor_config.json beside the graph: size, resample, rescale, mean/std fitted on the training
split); output `logits` (batch, classes). Edge method `classify_images` (encoded PNG/JPEG bytes or uint8
pixels); route POST /classify_image (image/png, image/jpeg, or {"images": [base64, ...]}). Scores:
accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for other classifiers. The finetune and distill
stages train it with the recipes of lifecycle.workloads.images.model; the report shows an RBF SVM beside it.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.base import SAMPLE_PREDICTIONS, ClassAnswers
from lifecycle.workloads.images.task import ImageTask


class ImageClassification(ClassAnswers, ImageTask):
    name = "image-classification"
    inputs_kind, answers_kind = "images", "labels"
    export_reads = ("classifier",)
    export_hint = "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-classifier"
    output = "logits"
    edge_method = "classify_images"
    route = "/classify_image"
    scores = TABLE_CLASSIFICATION
    fidelity = ("argmax_agreement", "logit_max_abs_diff")
    argmax_parity = True

    def evaluate(self, outputs, targets) -> dict:
        from lifecycle.evaluation.tables import classification_scores

        return classification_scores(outputs, targets)

    def test_metrics(self, outputs, targets) -> dict:
        from lifecycle.components.classification import collapse_metrics

        return {**self.evaluate(outputs, targets), **collapse_metrics(outputs, targets, outputs.shape[1])}

    # --------------------------------------------------------------------------------- the graph
    def torch_model(self, src: Path):
        from transformers import ViTForImageClassification

        return ViTForImageClassification.from_pretrained(src).eval()

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.workloads.images.model import predict

        return predict(model, tokenizer.transform(list(texts)), batch_size)

    # ----------------------------------------------------------------------------------- samples
    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                "sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}

    def split_labels(self, split) -> list:  # scores, targets and served answers: ClassAnswers
        return split.labels


TASK = ImageClassification()
