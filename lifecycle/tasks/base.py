"""The task contract: a task is a declaration (`Task`) composed of an inputs kind (`Inputs`: what the model
reads) and an answers kind (`Answers`: what one answer is), plus the few functions that really differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.schema import Holds

SAMPLE_PREDICTIONS = 8  # test inputs whose answers go into the manifest (and the bundle)


@dataclass(frozen=True)
class Scoring:
    """What a task's `score` gets, built once per stage from the task's loaded data (no reloads): the
    pipeline, the data (ctx.task_data(): its splits and whatever loading derived), the split scored, the
    fp32 outputs of the same inputs (`reference`, for fidelity) and where per-example predictions go."""

    pipeline: Any
    data: Any
    split: str
    reference: Any = None
    out_dir: Path | None = None

    @property
    def rows(self):
        return self.data.splits[self.split]


def task_data(ctx):
    """A task's data for a stage's context `ctx`: its `task.data` source, as loaded (and cached) by the context."""
    return ctx.data(ctx.pipeline.task.data)


@dataclass(frozen=True, eq=False)
class Inputs:
    """An inputs kind: what the model reads and how it gets to the graph. Functions that need the task
    take its declaration (`declared`) first."""

    kind: str  # text, prompts, rows, images: the recipe table's key, schema.json's inputs_kind
    reads: str  # the kind of data source it needs (schema.DataSource.reads)
    request_key: str  # the key of a service request's inputs: {"texts": [...]}
    read: Callable[[Any], list]  # a split's raw inputs as lifecycle.edge takes them
    preprocessor: Callable[[Path, Any], Any]  # (model directory, schema.Task) -> what makes the graph's feeds
    export_graph: Callable[..., None]  # (declared, model, preprocessor, path, opset): the torch export
    # (declared, out, src, preprocessor, schema.Task, input_names, model): schema.json and what edge needs beside it
    write_runtime_files: Callable[..., None]
    sample: Callable[[Any], dict]  # one input as a sample prediction records it ({"text": ...})
    wire: Callable[[list], list] = list  # raw inputs as a service request carries them (JSON values)
    graph_fusions: bool = False  # whether export tries onnxruntime's transformer fusions
    labelled: bool = True  # whether the task's data source must be labelled (label_field set)
    load: Callable[[Any], Any] = task_data  # the task's data (train / validation / test splits) for a context

    def __call__(self, split) -> list:
        """`task.inputs(split)`: the split's raw inputs."""
        return self.read(split)


def no_labels(model) -> list[str]:
    return []


def nothing(*_args) -> dict:
    return {}


def graph_outputs(predictor, inputs: list, batch_size: int = 64):
    return predictor.logits(inputs, batch_size)


def largest_difference(reference, outputs) -> float:
    from lifecycle.components.onnx import max_abs_diff

    return max_abs_diff(reference, outputs)


@dataclass(frozen=True, eq=False)
class Answers:
    """An answers kind: what one answer is, the graph output that holds it, and how two answers compare."""

    kind: str  # labels, vector, value, score, tokens: the recipe table's key, schema.json's answers_kind
    output: str  # the graph's one output
    width: Callable[[Any], int]  # the size of the output's last axis, from the model
    agree: Callable[[Any, Any, float], tuple[bool, float]]  # (http, local, tolerance) -> (agree, largest difference)
    labels: Callable[[Any], list[str]] = no_labels
    sequence: bool = False  # the output is (batch, sequence, width), not (batch, width)
    schema: Callable[[Any], dict] = nothing  # what schema.json says beyond the output (an embedder's pooling)
    details: Callable[[Any, Any], dict] = nothing  # (predictor, test outputs): what the manifest records beside samples
    argmax_parity: bool = False  # whether parity's argmax agreement means anything (a classifier's logits)
    # (predictor, inputs, batch_size) -> what fidelity compares with the reference (`Task.reference`'s
    # outputs for the same inputs): the graph's outputs, or a generator's continuations
    outputs: Callable[..., Any] = graph_outputs
    difference: Callable[[Any, Any], float] = largest_difference  # (reference, outputs) -> parity_max_abs_diff
    fidelity_at_export: bool = False  # whether export scores `fidelity` on the whole test split too
    # whether the serve stage's default gate (HTTP accuracy equal to the parent's) applies
    serve_accuracy: bool = True


@dataclass(frozen=True)
class Artifacts:
    """What the task's stages hold: what export reads (and the hint for a chain that gives it something
    else), what it writes, what finetune and distill hold, and which stages train it."""

    export_reads: tuple[Holds, ...]
    onnx_holds: Holds
    export_hint: str
    finetunes_into: Holds = "classifier"
    trained_by: str = "finetune"
    optimum_task: str | None = None  # optimum's export task name; None: optimum cannot export it
    genai_builder: bool = False  # onnxruntime-genai's model builder can export it (a decoder for generation)


@dataclass(frozen=True)
class Edge:
    method: str  # the lifecycle.edge.Predictor method that answers for the task
    route: str  # the service's POST route


def no_problem(task) -> str | None:
    return None


@dataclass(frozen=True)
class Settings:
    key: str | None = None  # the key of `task:` holding the task's settings; None: its name
    problem: Callable[[Any], str | None] = no_problem  # "field: why" for a setting it cannot honour


@dataclass(frozen=True)
class Training:
    """What a task's own recipes (tables, images) ask of the task they train."""

    evaluate: Callable[[Any, Any], dict]  # the task's scores of model outputs against a split's targets
    test_metrics: Callable[[Any, Any], dict]  # what the finetune stage reports on test: the scores and more
    head: Callable[[Any], dict] | None = None  # config fields of the model's head for the data (num_labels...)
    baseline: Callable[[Any, int], dict] | None = None  # (data, seed) -> the baseline's scores on the same split


@dataclass(frozen=True, eq=False)
class Task:
    """A task: about ten declared fields and no inherited implementation. The methods below only read the
    fields (and the kinds), so every task is a `Task` and nothing is a subclass."""

    name: str
    inputs: Inputs
    answers: Answers
    scores: tuple[str, ...]  # quality on a split, gateable; scores[0] is the headline
    fidelity: tuple[str, ...]  # agreement with the fp32 reference on the same inputs
    artifacts: Artifacts
    edge: Edge
    torch_model: Callable[[Path], Any]  # the eval-mode PyTorch module (with a `config`) the graph reproduces
    # (model, preprocessor, inputs, task, batch_size=64) -> the model's outputs (float32 numpy), parity's
    # reference; `task`: the pipeline's task settings (schema.Task: max_length, the generation settings...)
    reference: Callable[..., Any]
    score: Callable[[Any, Scoring], tuple[dict, Any]]  # (predictor, scoring) -> (scores and fidelity, outputs)
    # (answers, predictor, scoring of test) -> the `scores` of a service's answers; None: not scored
    served_scores: Callable[[list, Any, Scoring], dict] | None = None
    split_free: tuple[str, ...] = ()  # scores not computed on the task's splits (no val_ twin)
    settings: Settings = Settings()
    # (model, preprocessor, ctx) -> what export reports on test beside the model, named in `comparisons`:
    # for a task no finetune trains (so no finetune reports its control and baseline)
    compare: Callable[[Any, Any, Any], dict] = nothing
    comparisons: tuple[str, ...] = ()
    # (embed, pipeline) -> scores of an encoder being trained (the contrastive objective) under this task
    encoder_scores: Callable[[Any, Any], dict] = nothing
    train: Training | None = None  # what the task's own recipes ask of it

    # ------------------------------------------------------------- what consumers read, from the fields
    @property
    def inputs_kind(self) -> str:
        return self.inputs.kind

    @property
    def answers_kind(self) -> str:
        return self.answers.kind

    @property
    def finetunes_into(self) -> Holds:  # what the finetune and distill stages hold under this task
        return self.artifacts.finetunes_into

    @property
    def trained_by(self) -> str:
        return self.artifacts.trained_by

    def data(self, ctx):
        """The task's data (train / validation / test splits) for a stage's context, as its inputs kind loads it."""
        return self.inputs.load(ctx)

    @property
    def split_scores(self) -> tuple[str, ...]:
        """Scores that depend on the examples: reported on test, and on validation as val_<name>."""
        return tuple(m for m in (*self.scores, *self.fidelity) if m not in self.split_free)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What export and quantize report for this task besides the ONNX metrics (latency, size)."""
        return (*self.scores, *self.fidelity, *(f"val_{m}" for m in self.split_scores))

    @property
    def scores_answers(self) -> bool:
        return self.served_scores is not None

    # ------------------------------------------------------------- the graph, through the kinds
    def preprocessor(self, src: Path, task):
        return self.inputs.preprocessor(src, task)

    def export_graph(self, model, preprocessor, path: Path, opset: int) -> None:
        self.inputs.export_graph(self, model, preprocessor, path, opset)

    def write_runtime_files(self, out: Path, src: Path, preprocessor, task, input_names: list[str], model) -> None:
        self.inputs.write_runtime_files(self, out, src, preprocessor, task, input_names, model)

    def width(self, model) -> int:
        return self.answers.width(model)

    def labels(self, model) -> list[str]:
        return self.answers.labels(model)

    def graph_schema(self, model) -> dict:
        """schema.json's output (name, dtype, shape), the identity lifecycle.edge dispatches on, and the answers' extras."""
        shape = ["batch", "sequence", self.width(model)] if self.answers.sequence else ["batch", self.width(model)]
        return {"outputs": {self.answers.output: {"dtype": "float32", "shape": shape}},
                "task": self.name, "inputs_kind": self.inputs.kind, "answers_kind": self.answers.kind,
                "request_key": self.inputs.request_key, "method": self.edge.method, "route": self.edge.route,
                **self.answers.schema(model)}

    # ------------------------------------------------------------- samples and answers
    def wire(self, items: list) -> list:
        return self.inputs.wire(items)

    def outputs(self, predictor, inputs: list, batch_size: int = 64):
        """What fidelity compares, by the answers kind: the graph's outputs per input, or a generator's continuations."""
        return self.answers.outputs(predictor, inputs, batch_size)

    def sample_predictions(self, predictor, items: list) -> list[dict]:
        """One record per input, the answer as the edge method gives it (JSON)."""
        items = list(items)
        return [{**self.inputs.sample(x), "answer": a} for x, a in zip(items, predictor.answers(items))]

    def prediction_details(self, predictor, rows, outputs) -> dict:
        """What the manifest records of a test run: what the answers kind keeps, and the sample predictions."""
        return {**self.answers.details(predictor, outputs),
                "sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}

    def answers_agree(self, http, local, tolerance: float) -> tuple[bool, float]:
        return self.answers.agree(http, local, tolerance)


def own_recipe_problem(cfg, task: str, baseline: str, model_kind: str, lora: bool = False) -> str | None:
    """"field: why" for a finetune setting that a task's own recipe (tables, images) does not honour: those
    recipes keep the last step of the stage's budget (no checkpoint selection yet), so the text recipe's
    settings are refused rather than ignored. `baseline`: what the recipe always reports instead of TF-IDF;
    `model_kind`: what a `model.path` must hold; `lora`: whether the recipe takes adapters."""
    unsupported = {"multi_label": cfg.multi_label, "class_weights": cfg.class_weights,
                   "early_stopping": cfg.early_stopping, "validation_limit": cfg.validation_limit,
                   "baseline": cfg.baseline or None, "head_pooling": None if cfg.head_pooling == "auto" else 1}
    if not lora:
        unsupported = {"lora": cfg.lora, **unsupported}
    elif cfg.lora and cfg.model is not None and cfg.model.preset:
        noun = model_kind.split(" ", 1)[1]  # "a table model" -> "table model"
        return (f"lora: adapters on a randomly initialised {noun} learn next to nothing; start from a pre-trained "
                f"{noun} (a pretrain stage or a `model.path`), or train in full")
    given = next((k for k, v in unsupported.items() if v is not None), None)
    if given:
        why = f" (the {baseline} baseline is always reported)" if given == "baseline" else ""
        return f"{given}: not supported for {task} yet{why}"
    if cfg.model is not None and cfg.model.package:
        return f"model.package: {model_kind} starts from a `preset` (a size) or {model_kind} `path`"
    return None


# settings of the text distillation recipe that the recipes of tables and images do not honour
OWN_DISTILL_REFUSES = {
    "hidden_weight": lambda c: c.hidden_weight > 0, "cache_teacher_logits": lambda c: not c.cache_teacher_logits,
    "early_stopping": lambda c: c.early_stopping is not None, "validation_limit": lambda c: c.validation_limit is not None,
    "student.model": lambda c: c.student.model is not None,
}


def own_distill_problem(cfg, task: str) -> str | None:
    """"field: why" for a distill setting that a task's own recipe (tables, images) does not honour."""
    given = next((field for field, refused in OWN_DISTILL_REFUSES.items() if refused(cfg)), None)
    return f"{given}: not supported for {task} yet" if given else None
