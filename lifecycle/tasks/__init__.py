"""The task contract: what a model is for, as every workload declares it (`Task`, in base.py): a declaration
composed of an inputs kind (`Inputs`) and an answers kind (`Answers`), no subclass and no default of its own.

A task is declared in its workload's wing (lifecycle.workloads.<wing>), which lists it in `TASKS`;
lifecycle.workloads gathers them under the names `task: {type: ...}` takes. Stages, the edge runtime, the
service and the report never branch on a task's name: they ask its declaration.

What a declaration says (lifecycle.tasks.base.Task, about ten fields):
- its kinds: what the model reads (`inputs`: text, prompts, rows, images: a split's raw inputs, the
  preprocessor, the export and the files beside the graph, what a request carries) and what it answers
  (`answers`: labels, vector, value, score, tokens: the graph's output, how two answers compare, what
  parity and the serve stage's default gate apply); finetune and distill find their recipe by them;
- `artifacts`: which model kinds export turns into its ONNX kind, the hint for a chain that gives it
  something else, what finetune holds; `edge`: the edge method and the service route;
- the graph: `torch_model` (the module the graph reproduces) and `reference` (its outputs: parity's);
- metrics: `scores` (the first is the report's headline), `fidelity` (to the fp32 reference), and
  `score(predictor, Scoring)`, which gets the loaded data once (no reloads per ladder rung);
- serving: `served_scores` of a service's answers (None: the serve stage does not score them).

See docs/ARCHITECTURE.md.
"""

from lifecycle.tasks.base import (
           SAMPLE_PREDICTIONS,
           Answers,
           Artifacts,
           Edge,
           Inputs,
           Scoring,
           Settings,
           Task,
           Training,
)
from lifecycle.tasks.kinds import LABELS, TEXT, VECTOR

__all__ = ["LABELS", "SAMPLE_PREDICTIONS", "TEXT", "VECTOR", "Answers", "Artifacts", "Edge", "Inputs", "Scoring",
           "Settings", "Task", "Training"]
