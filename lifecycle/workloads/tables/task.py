"""Rows, the inputs kind of every table task: rows of a table source in, lifecycle.edge.TablePreprocessing
(preprocessing.json beside the graph) between the raw row and the graph's inputs `numeric`,
`numeric_missing`, `categorical`, and the feature-tokenizer transformer of lifecycle.workloads.tables.model.
Also the value and score answers kinds (regression, anomaly)."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.tasks import Answers, Inputs

INPUT_DTYPES = {"numeric": "float32", "numeric_missing": "float32", "categorical": "int64"}


def rows(split) -> list[dict]:
    """Rows as a service receives them: column -> value, None for a missing one (the feature columns:
    lifecycle.data.tables puts the target last)."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
            for row in split.iloc[:, :-1].to_dict("records")]


def target_values(split) -> list:
    return split[split.columns[-1]].tolist()


def torch_model(src: Path):
    from lifecycle.workloads.tables.model import TableTransformer

    return TableTransformer.from_pretrained(src).eval()


def reference(model, preprocessing, items, task=None, batch_size=64):
    from lifecycle.workloads.tables.model import predict

    return predict(model, preprocessing.transform_rows(items)[0], batch_size)


def preprocessor(src: Path, task):
    from lifecycle.edge import PREPROCESSING, TablePreprocessing

    return TablePreprocessing.load(src / PREPROCESSING)


def export_graph(declared, model, preprocessor, path, opset):
    from lifecycle.workloads.tables.model import export_onnx

    sample = preprocessor.transform_rows([{c: None for c in preprocessor.columns}] * 2)[0]  # all missing
    export_onnx(model, sample, path, opset, output=declared.answers.output)


def write_runtime_files(declared, out, src, preprocessor, task, input_names, model):
    import shutil

    from lifecycle.edge import PREPROCESSING

    shutil.copy2(src / PREPROCESSING, out / PREPROCESSING)
    (out / "labels.json").write_text(json.dumps(declared.labels(model)))
    schema = {"inputs": {n: {"dtype": INPUT_DTYPES[n], "shape": ["batch", "features"]} for n in input_names},
              "preprocessor": PREPROCESSING, "columns": preprocessor.columns, **declared.graph_schema(model)}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))


# {"rows": [{column: value, ...}, ...]}. The encoder is a BertModel, so export tries onnxruntime's BERT
# fusions and keeps one only where it times no slower and stays within the parity bound
# (lifecycle.components.onnx.maybe_fused). Attention fuses without a mask; the quickstart's graph at
# batch 1,024 then skips a [0,2,3,1] Transpose of the keys, one of its costliest ops in onnxruntime's profile.
ROWS = Inputs(kind="rows", reads="table", request_key="rows", read=rows, preprocessor=preprocessor,
              export_graph=export_graph, write_runtime_files=write_runtime_files, sample=lambda x: {"row": x},
              graph_fusions=True)


def number_agrees(key: str):
    """Two answers {key: number} agree within the tolerance."""

    def agree(http, local, tolerance):
        diff = abs(float(http[key]) - float(local[key]))
        return diff <= tolerance, diff

    return agree


VALUE = Answers(kind="value", output="prediction", width=lambda model: 1, agree=number_agrees("value"))
SCORE = Answers(kind="score", output="anomaly_score", width=lambda model: 1, agree=number_agrees("anomaly_score"))

