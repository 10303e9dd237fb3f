"""The toy task: a text source whose texts are numbers ("0.5 -1.2 3.0"), read as vectors; the answer is
whether their weighted sum is positive ({"label", "score"})."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.tasks import Answers, Artifacts, Edge, Inputs, Task

LABELS = ["negative", "positive"]
PREPROCESSING = "vectors.json"  # the preprocessor file: how wide a vector the graph takes


def vectors(split) -> list[list[float]]:
    return [[float(x) for x in text.split()] for text in split["text"]]


def export_graph(declared, model, preprocessor, path: Path, opset: int) -> None:
    import torch

    output = declared.answers.output
    torch.onnx.export(model, (torch.zeros(1, model.width),), str(path), input_names=["features"],
                      output_names=[output], dynamic_axes={"features": {0: "batch"}, output: {0: "batch"}},
                      opset_version=opset, dynamo=False)


def write_runtime_files(declared, out: Path, src, preprocessor, task, input_names, model) -> None:
    schema = {"inputs": {"features": {"dtype": "float32", "shape": ["batch", model.width]}},
              "preprocessor": PREPROCESSING, "max_length": 0, **declared.graph_schema(model)}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    (out / "labels.json").write_text(json.dumps(LABELS))
    (out / PREPROCESSING).write_text(json.dumps({"width": model.width}))


# its own inputs kind: a text source whose texts are numbers, read as vectors; no preprocessor file to load
VECTORS = Inputs(kind="vectors", reads="text", request_key="vectors", read=vectors, preprocessor=lambda src, task: None,
                 export_graph=export_graph, write_runtime_files=write_runtime_files, sample=lambda x: {"text": x})


def sign_agree(http, local, tolerance):
    diff = abs(http["score"] - local["score"])
    return http["label"] == local["label"] and diff <= tolerance, diff


# its own answers kind: {"label", "score"}
SIGN = Answers(kind="sign", output="scores", width=lambda model: len(LABELS), agree=sign_agree,
               labels=lambda model: LABELS)


def torch_model(src: Path):
    from toy_workload.recipe import load

    return load(src)


def reference(model, preprocessor, inputs, task=None, batch_size=64):
    import torch

    with torch.no_grad():
        return model(torch.tensor(inputs, dtype=torch.float32)).numpy()


def score(predictor, scoring):
    import numpy as np

    rows = scoring.rows
    outputs = predictor.logits(VECTORS(rows))
    metrics = {"accuracy": float((outputs.argmax(-1) == np.array(rows["label"])).mean())}
    if scoring.reference is not None:
        metrics["score_max_abs_diff"] = float(np.abs(outputs - scoring.reference).max())
    return metrics, outputs


def served_scores(answers, predictor, scoring) -> dict:
    right = [a is not None and a["label"] == LABELS[y] for a, y in zip(answers, scoring.rows["label"])]
    return {"accuracy": sum(right) / len(right)}


TASK = Task(
    name="toy-sign", inputs=VECTORS, answers=SIGN, scores=("accuracy",), fidelity=("score_max_abs_diff",),
    artifacts=Artifacts(("classifier",), "onnx-classifier",
                        export_hint="export reads the toy's trained model: put a finetune stage before it"),
    edge=Edge("answer", "/sign"), torch_model=torch_model, reference=reference, score=score,
    served_scores=served_scores)
