"""The task contract: what a model is for, as every workload declares it (`TaskPlugin`, in base.py).

A task is declared in its workload's wing (lifecycle.workloads.<wing>), which lists it in `TASKS`;
lifecycle.workloads gathers them under the names `task: {type: ...}` takes. Stages, the edge runtime, the
service and the report never branch on a task's name: they ask its declaration.

What a declaration says:
- its kinds: what the model reads (`inputs`: text, prompts, rows, images) and answers (`answers`: labels,
  vector, value, score, tokens); finetune and distill find their recipe by them;
- artifacts: which model kinds the export stage turns into its ONNX kind (`export_reads`, `onnx_holds`),
  and the hint when a chain gives export something else (`export_hint`);
- the graph: the in-process model whose outputs the ONNX graph reproduces (`torch_model`), those
  outputs for inputs (`reference`, the parity reference), what the graph returns and how it is read
  (`graph_schema`: output name, dtype, shape, the edge method, the service route; `labels`);
- metrics: `scores` (quality on a split; the first is the headline of the report), `fidelity` (to
  the fp32 reference, which export and quantize report and gates may name), and `score()` that
  computes both from a predictor;
- samples: `sample_predictions()` for the manifest, reproduced on a device by `Predictor.check()`;
- serving: `route`, how a service's answers are scored (`answer_scores`) and how an HTTP answer is
  compared with the same input run in-process (`answers_agree`);
- inputs: a split's raw inputs (`inputs`), what turns them into the graph's feeds (`preprocessor`), the
  export sample and the files beside the graph (`export_graph`, `write_runtime_files`), and what a
  request carries of them (`wire`).

See docs/ARCHITECTURE.md.
"""

from lifecycle.tasks.base import TaskPlugin

__all__ = ["TaskPlugin"]
