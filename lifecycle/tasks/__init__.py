"""Tasks as plug-ins: what a model is for, declared in one module per task.

A task module defines one `TaskPlugin` subclass and `TASK = ThatClass()`; `REGISTRY` below lists them
under the names `task: {type: ...}` takes (`schema.TaskType`). Stages, the edge runtime, the service and
the report never branch on the task's name: they ask the plug-in.

What a plug-in declares:
- artifacts: which model kinds the export stage turns into its ONNX kind (`export_reads`, `onnx_holds`),
  and the hint when a chain gives export something else (`export_hint`);
- the graph: the in-process model whose outputs the ONNX graph reproduces (`torch_model`), those
  outputs for texts (`reference`, the parity reference), what the graph returns and how it is read
  (`graph_schema`: output name, dtype, shape, the edge method, the service route; `labels`);
- metrics: `scores` (quality on a split; the first is the headline of the report), `fidelity` (to
  the fp32 reference, which export and quantize report and gates may name), and `score()` that
  computes both from a predictor;
- samples: `sample_predictions()` for the manifest, reproduced on a device by `Predictor.check()`;
- serving: `route`, how a service's answers are scored (`answer_scores`) and how an HTTP answer is
  compared with the same text run in-process (`answers_agree`);
- inputs: what the model reads (`reads`: text, table or image), a split's raw inputs (`inputs`), what turns them
  into the graph's feeds (`preprocessor`), the export sample and the files beside the graph
  (`export_graph`, `write_runtime_files`), and what a request carries of them (`wire`); defaults are the
  text graphs' (a tokenizer);
- training: a task whose model is not a text model brings its finetune recipe (`own_training`, `finetune`).

Adding a task: a module here (the plug-in), its name in `schema.TaskType` and in `REGISTRY`, the edge
method in `lifecycle.edge` and the route in `serving/service.py` when they are new, and tests. See
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from lifecycle.tasks import (
    classification,
    embedding,
    generation,
    image_classification,
    image_embedding,
    tabular_anomaly,
    tabular_classification,
    tabular_regression,
)
from lifecycle.tasks.base import TaskPlugin

REGISTRY: dict[str, TaskPlugin] = {t.name: t for t in (classification.TASK, embedding.TASK, tabular_classification.TASK,
                                                        tabular_regression.TASK, tabular_anomaly.TASK,
                                                        image_classification.TASK, image_embedding.TASK,
                                                        generation.TASK)}
DEFAULT = "classification"  # a pipeline without `task: {type: ...}`


def get(name: str | None) -> TaskPlugin:
    """The plug-in for `task: {type: name}`."""
    return REGISTRY[name or DEFAULT]
