"""Images, the inputs kind of every image task (image_classification, image_embedding): images of an
image source in (lifecycle.data.images: imagefolder or sklearn-digits), lifecycle.edge.ImagePreprocessing
between the image and the graph's input `pixel_values` (batch, channels, height, width) float32, built from
the model's transformers image-processor config (preprocessor_config.json beside the graph), a small vision
transformer (lifecycle.workloads.images.model) trained by the task's own recipe, and requests that carry images as base64
PNG ({"images": [...]}) or as the body."""

from __future__ import annotations

from pathlib import Path

from lifecycle.tasks import Inputs


def images(split) -> list:
    """A split's images: uint8 pixels (H, W[, C]) in the source's mode, at their own size."""
    return list(split.images)


def preprocessor(src: Path, task):
    from lifecycle.edge import IMAGE_PROCESSOR, ImagePreprocessing

    return ImagePreprocessing.load(src / IMAGE_PROCESSOR)


def export_graph(declared, model, preprocessor, path, opset):
    from lifecycle.workloads.images.model import export_onnx

    export_onnx(model, preprocessor.transform([preprocessor.blank()] * 2), path, opset, output=declared.answers.output)


def write_runtime_files(declared, out, src, preprocessor, task, input_names, model):
    import json
    import shutil

    from lifecycle.edge import IMAGE_PROCESSOR

    for name in (IMAGE_PROCESSOR, "config.json"):
        shutil.copy2(src / name, out / name)
    (out / "labels.json").write_text(json.dumps(declared.labels(model)))
    shape = ["batch", model.config.num_channels, model.config.image_size, model.config.image_size]
    schema = {"inputs": {"pixel_values": {"dtype": "float32", "shape": shape}}, "preprocessor": IMAGE_PROCESSOR,
              **declared.graph_schema(model)}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))


def png_base64(pixels) -> str:
    """uint8 pixels as a base64 PNG (what a client sends; PNG is lossless, so the pixels arrive unchanged)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# {"images": [base64 PNG/JPEG, ...]} (lossless PNG: the server sees the same pixels); onnxruntime's
# transformer fusions look for input_ids and a mask
IMAGES = Inputs(kind="images", reads="image", request_key="images", read=images, preprocessor=preprocessor,
                export_graph=export_graph, write_runtime_files=write_runtime_files,
                sample=lambda x: {"image": png_base64(x)}, wire=lambda items: [png_base64(x) for x in items])
