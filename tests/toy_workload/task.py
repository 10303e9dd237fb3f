"""The toy task: a text source whose texts are numbers ("0.5 -1.2 3.0"), read as vectors; the answer is
whether their weighted sum is positive ({"label", "score"})."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.tasks import TaskPlugin

LABELS = ["negative", "positive"]
PREPROCESSING = "vectors.json"  # the preprocessor file: how wide a vector the graph takes


def vectors(split) -> list[list[float]]:
    return [[float(x) for x in text.split()] for text in split["text"]]


class ToySign(TaskPlugin):
    name = "toy-sign"
    inputs_kind, answers_kind = "vectors", "sign"
    reads = "text"  # its data source: texts of numbers
    export_reads = ("classifier",)
    export_hint = "export reads the toy's trained model: put a finetune stage before it"
    onnx_holds = "onnx-classifier"
    output = "scores"
    edge_method = "answer"
    route = "/sign"
    request_key = "vectors"
    scores = ("accuracy",)
    fidelity = ("score_max_abs_diff",)
    graph_fusions = False

    def inputs(self, split) -> list:
        return vectors(split)

    def preprocessor(self, src: Path, task):
        return None

    def torch_model(self, src: Path):
        from toy_workload.recipe import load

        return load(src)

    def reference(self, model, tokenizer, inputs, max_length, batch_size=64):
        import torch

        with torch.no_grad():
            return model(torch.tensor(inputs, dtype=torch.float32)).numpy()

    def export_graph(self, model, preprocessor, path: Path, opset: int) -> None:
        import torch

        torch.onnx.export(model, (torch.zeros(1, model.width),), str(path), input_names=["features"],
                          output_names=[self.output], dynamic_axes={"features": {0: "batch"}, self.output: {0: "batch"}},
                          opset_version=opset, dynamo=False)

    def write_runtime_files(self, out: Path, src, preprocessor, task, input_names, model) -> None:
        schema = {"inputs": {"features": {"dtype": "float32", "shape": ["batch", model.width]}},
                  "preprocessor": PREPROCESSING, "max_length": 0, **self.graph_schema(model)}
        (out / "schema.json").write_text(json.dumps(schema, indent=2))
        (out / "labels.json").write_text(json.dumps(LABELS))
        (out / PREPROCESSING).write_text(json.dumps({"width": model.width}))

    def width(self, model) -> int:
        return len(LABELS)

    def labels(self, model) -> list[str]:
        return LABELS

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        import numpy as np

        outputs = predictor.logits(self.inputs(rows))
        metrics = {"accuracy": float((outputs.argmax(-1) == np.array(rows["label"])).mean())}
        if reference is not None:
            metrics["score_max_abs_diff"] = float(np.abs(outputs - reference).max())
        return metrics, outputs

    def answer_scores(self, answers, rows, predictor) -> dict:
        right = [a is not None and a["label"] == LABELS[y] for a, y in zip(answers, rows["label"])]
        return {"accuracy": sum(right) / len(right)}

    def answers_agree(self, http, local, tolerance):
        diff = abs(http["score"] - local["score"])
        return http["label"] == local["label"] and diff <= tolerance, diff


TASK = ToySign()
