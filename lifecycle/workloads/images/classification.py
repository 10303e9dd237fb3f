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

from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.tasks import LABELS, Artifacts, Edge, Task, Training
from lifecycle.tasks.kinds import (
    class_answer_scores,
    class_evaluate,
    class_scores,
    class_test_metrics,
    split_labels,
)
from lifecycle.workloads.images.task import IMAGES


def torch_model(src: Path):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(src).eval()


def reference(model, preprocessing, images, task=None, batch_size=64):
    from lifecycle.workloads.images.model import predict

    return predict(model, preprocessing.transform(list(images)), batch_size)




TASK = Task(
    name="image-classification", inputs=IMAGES, answers=LABELS, scores=CLASS_SCORES,
    fidelity=("argmax_agreement", "logit_max_abs_diff"),
    artifacts=Artifacts(("classifier",), "onnx-classifier", export_hint=(
        "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)")),
    edge=Edge("classify_images", "/classify_image"), torch_model=torch_model, reference=reference,
    score=class_scores(class_evaluate, split_labels, IMAGES),
    served_scores=class_answer_scores(class_evaluate, split_labels), train=Training(class_evaluate, class_test_metrics))
