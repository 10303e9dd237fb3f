"""What every table task declares alike (tabular_classification, tabular_regression subclass it): rows of a
table source in, lifecycle.edge.TablePreprocessing (preprocessing.json beside the graph) between the raw
row and the graph's inputs `numeric`, `numeric_missing`, `categorical`, the feature-tokenizer transformer
of lifecycle.workloads.tables.model, and its finetune recipe. A subclass adds what its answers are: the head
(`head`), the scores (`evaluate`, `test_metrics`), the gradient-boosting baseline, and how the edge
runtime and the service answer."""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.tasks.base import SAMPLE_PREDICTIONS, TaskPlugin

INPUT_DTYPES = {"numeric": "float32", "numeric_missing": "float32", "categorical": "int64"}


class TableTask(TaskPlugin):
    reads = "table"
    graph_fusions = False  # onnxruntime's BERT fusions look for input_ids and a mask; a table graph has neither
    request_key = "rows"  # {"rows": [{column: value, ...}, ...]}

    def head(self, data) -> dict:
        """Config fields of the model's head for `data` (num_labels and what the answers need)."""
        raise NotImplementedError

    def evaluate(self, outputs, targets) -> dict:
        """The task's `scores` of model outputs against a split's targets (TableData.target)."""
        raise NotImplementedError

    def test_metrics(self, outputs, targets) -> dict:
        """What the finetune stage reports on test: the scores, and whatever the task adds."""
        return self.evaluate(outputs, targets)

    def baseline(self, data, seed: int) -> dict:
        """baseline_gbdt_<score>: gradient-boosted trees on the same split."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- the graph
    def torch_model(self, src: Path):
        from lifecycle.workloads.tables.model import TableTransformer

        return TableTransformer.from_pretrained(src).eval()

    def preprocessor(self, src: Path, task):
        from lifecycle.edge import PREPROCESSING, TablePreprocessing

        return TablePreprocessing.load(src / PREPROCESSING)

    def inputs(self, split) -> list[dict]:
        """Rows as a service receives them: column -> value, None for a missing one (the feature
        columns: lifecycle.data.tables puts the target last)."""
        return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
                for row in split.iloc[:, :-1].to_dict("records")]

    @staticmethod
    def target_values(split) -> list:
        return split[split.columns[-1]].tolist()

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.workloads.tables.model import predict

        return predict(model, tokenizer.transform_rows(texts)[0], batch_size)

    def export_graph(self, model, preprocessor, path, opset):
        from lifecycle.workloads.tables.model import export_onnx

        sample = preprocessor.transform_rows([{c: None for c in preprocessor.columns}] * 2)[0]  # all missing
        export_onnx(model, sample, path, opset, output=self.output)

    def write_runtime_files(self, out, src, preprocessor, task, input_names, model):
        import shutil

        from lifecycle.edge import PREPROCESSING

        shutil.copy2(src / PREPROCESSING, out / PREPROCESSING)
        (out / "labels.json").write_text(json.dumps(self.labels(model)))
        schema = {"inputs": {n: {"dtype": INPUT_DTYPES[n], "shape": ["batch", "features"]} for n in input_names},
                  "preprocessor": PREPROCESSING, "columns": preprocessor.columns, **self.graph_schema(model)}
        (out / "schema.json").write_text(json.dumps(schema, indent=2))

    # ----------------------------------------------------------------------------------- samples
    def sample_predictions(self, predictor, texts):
        return [{"row": r, "answer": a} for r, a in zip(texts, predictor.answers(texts))]

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}
