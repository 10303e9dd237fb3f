"""Table classification: a feature-tokenizer transformer (lifecycle.tabular) on the rows of a table source
(lifecycle.data.tables), one class per row.

Graph: inputs `numeric`, `numeric_missing`, `categorical` (lifecycle.edge.TablePreprocessing makes them
from raw rows, with the vocabularies and normalisation fitted on the training split: preprocessing.json
beside the graph), output `logits` (batch, classes); edge method `predict_rows`; route POST /predict.
Scores: accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for text classifiers. The finetune stage
trains it with `train_table` (the from-scratch model is built from the data's schema and a size preset).
"""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.evaluation.tables import TABLE_CLASSIFICATION
from lifecycle.tasks.base import SAMPLE_PREDICTIONS, TaskPlugin


class TabularClassification(TaskPlugin):
    name = "tabular-classification"
    export_reads = ("classifier",)
    export_hint = "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"
    onnx_holds = "onnx-classifier"
    output = "logits"
    edge_method = "predict_rows"
    route = "/predict"
    scores = TABLE_CLASSIFICATION
    fidelity = ("argmax_agreement", "logit_max_abs_diff")
    argmax_parity = True
    reads = "table"
    graph_fusions = False  # onnxruntime's BERT fusions look for input_ids and a mask; a table graph has neither

    own_finetune = True

    def finetune(self, cfg, parent, ctx) -> dict:
        from lifecycle import tabular

        return tabular.finetune(cfg, parent, ctx)

    def finetune_problem(self, cfg) -> str | None:
        # The table recipe trains every weight for the stage's budget and keeps the last step (no
        # checkpoint selection yet); settings for the text recipe are refused rather than ignored.
        unsupported = {"lora": cfg.lora, "multi_label": cfg.multi_label, "class_weights": cfg.class_weights,
                       "early_stopping": cfg.early_stopping, "validation_limit": cfg.validation_limit,
                       "baseline": cfg.baseline or None, "head_pooling": None if cfg.head_pooling == "auto" else 1}
        given = next((k for k, v in unsupported.items() if v is not None), None)
        if given:
            return f"{given}: not supported for {self.name} yet (the gradient-boosting baseline is always reported)"
        if cfg.model is not None and cfg.model.package:
            return "model.package: a table model starts from a `preset` (a size) or a table model `path`"
        return None

    # --------------------------------------------------------------------------------- the graph
    def torch_model(self, src: Path):
        from lifecycle.tabular import TableTransformer

        return TableTransformer.from_pretrained(src).eval()

    def preprocessor(self, src: Path, task):
        from lifecycle.edge import PREPROCESSING, TablePreprocessing

        return TablePreprocessing.load(src / PREPROCESSING)

    def inputs(self, split) -> list[dict]:
        """Rows as a service receives them: column -> value, None for a missing one (the feature
        columns: lifecycle.data.tables puts the target last)."""
        return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
                for row in split.iloc[:, :-1].to_dict("records")]

    def reference(self, model, tokenizer, texts, max_length, batch_size=64):
        from lifecycle.tabular import predict

        return predict(model, tokenizer.transform_rows(texts)[0], batch_size)

    def export_graph(self, model, preprocessor, path, opset):
        from lifecycle.tabular import export_onnx

        sample = preprocessor.transform_rows([{c: None for c in preprocessor.columns}] * 2)[0]  # all missing
        export_onnx(model, sample, path, opset, output=self.output)

    def write_runtime_files(self, out, src, preprocessor, task, input_names, model):
        import shutil

        from lifecycle.edge import PREPROCESSING

        shutil.copy2(src / PREPROCESSING, out / PREPROCESSING)
        (out / "labels.json").write_text(json.dumps(self.labels(model)))
        dtypes = {"numeric": "float32", "numeric_missing": "float32", "categorical": "int64"}
        schema = {"inputs": {n: {"dtype": dtypes[n], "shape": ["batch", "features"]} for n in input_names},
                  "preprocessor": PREPROCESSING, "columns": preprocessor.columns, **self.graph_schema(model)}
        (out / "schema.json").write_text(json.dumps(schema, indent=2))

    def width(self, model) -> int:
        return model.config.num_labels

    def labels(self, model) -> list[str]:
        id2label = model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    # ------------------------------------------------------------------------------------ scores
    def targets(self, predictor, split):
        """Class ids of a split's target column by the model's labels (-1: a class the model does not know)."""
        import numpy as np

        index = {name: i for i, name in enumerate(predictor.labels)}
        return np.array([index.get(v, -1) for v in split[split.columns[-1]]], dtype=np.int64)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.components.onnx import argmax_agreeing, max_abs_diff
        from lifecycle.evaluation.tables import classification_scores

        logits = predictor.logits(self.inputs(rows))
        metrics = classification_scores(logits, self.targets(predictor, rows))
        if reference is not None:
            metrics.update(argmax_agreement=argmax_agreeing(logits, reference) / len(logits),
                           logit_max_abs_diff=max_abs_diff(logits, reference))
        return metrics, logits

    def sample_predictions(self, predictor, texts):
        return [{"row": r, "answer": a} for r, a in zip(texts, predictor.answers(texts))]

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"test_predictions": [int(i) for i in outputs.argmax(-1)],
                "sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}

    def answer_scores(self, answers, rows, predictor) -> dict:
        import numpy as np

        from lifecycle.evaluation.tables import classification_scores

        scores = np.array([[a["scores"][n] for n in predictor.labels] if a else [0.0] * len(predictor.labels)
                           for a in answers])
        return classification_scores(np.log(np.clip(scores, 1e-12, 1)), self.targets(predictor, rows))

    def answers_agree(self, http, local, tolerance):
        from lifecycle.tasks.classification import TASK

        return TASK.answers_agree(http, local, tolerance)  # the same answer shape: label, score, scores


TASK = TabularClassification()
