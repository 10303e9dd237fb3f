"""The plug-in contract every task module implements (see lifecycle.tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lifecycle.schema import Holds

SAMPLE_PREDICTIONS = 8  # test texts whose answers go into the manifest (and the bundle)


class TaskPlugin:
    name: ClassVar[str]
    # What the model reads (text, prompts, rows, images) and what it answers (labels, vector, value, score,
    # tokens): the recipe table's key for finetune and distill (lifecycle.workloads), and schema.json's kinds.
    inputs_kind: ClassVar[str]
    answers_kind: ClassVar[str]
    export_reads: ClassVar[tuple[Holds, ...]]  # what the export stage reads under this task
    export_hint: ClassVar[str]  # how to fix a chain that gives export something else
    trained_by: ClassVar[str] = "finetune"  # the stages that train this task's model (a refused chain's hint)
    finetunes_into: ClassVar[Holds] = "classifier"  # what a finetune (and distill) stage under this task holds
    onnx_holds: ClassVar[Holds]  # what export writes (and quantize keeps)
    output: ClassVar[str]  # the graph's one output
    edge_method: ClassVar[str]  # the lifecycle.edge.Predictor method that answers for this task
    route: ClassVar[str]  # the service's POST route
    scores: ClassVar[tuple[str, ...]]  # quality on a split, gateable; scores[0] is the headline
    fidelity: ClassVar[tuple[str, ...]]  # agreement with the fp32 reference on the same texts
    split_free: ClassVar[tuple[str, ...]] = ()  # scores not computed on the task's splits (no val_ twin)
    # Whether parity's argmax agreement means anything (a classifier's logits: yes; an embedding: no).
    argmax_parity: ClassVar[bool] = False
    # Whether export also scores `fidelity` on the whole test split (beyond the parity texts).
    fidelity_at_export: ClassVar[bool] = False
    optimum_task: ClassVar[str | None] = None  # optimum's export task name; None: optimum cannot export it
    # What the model reads: "text" (a tokenizer's ids), "table" (rows of a table source, through
    # lifecycle.edge.TablePreprocessing) or "image" (lifecycle.edge.ImagePreprocessing). The task's data
    # source must be of the same kind.
    reads: ClassVar[str] = "text"
    labelled_data: ClassVar[bool] = True  # whether `task.data` must be a labelled source (label_field set)
    settings_key: ClassVar[str | None] = None  # the key of `task:` holding this task's settings; None: its name
    graph_fusions: ClassVar[bool] = True  # whether export tries onnxruntime's transformer fusions
    request_key: ClassVar[str] = "texts"
    # The serve stage's default gate: its HTTP answers score as well as the parent (accuracy against the
    # test labels); False for a task whose answers have no labels to score (a generator).
    serve_accuracy: ClassVar[bool] = True  # the key of a service request's inputs: {"texts": [...]}

    def settings_problem(self, task) -> str | None:
        """"field: why" for a setting under `task:` (schema.Task) that this task cannot honour, else None."""
        return None

    def data(self, ctx):
        """The task's data (train / validation / test splits) for a stage's context `ctx`."""
        return ctx.data(ctx.pipeline.task.data)

    # ---------------------------------------------------------------- inputs: what the graph is fed
    # The defaults are the text graphs' (a tokenizer: input_ids, attention_mask...); a task on other
    # inputs (table rows, images) overrides these four, and export, quantize and the edge runtime follow.
    def inputs(self, split) -> list:
        """A split's raw inputs as lifecycle.edge takes them (Predictor.logits / encode): its texts."""
        return split["text"]

    def wire(self, inputs: list) -> list:
        """Raw inputs as a service request carries them (JSON values): texts and rows as they are."""
        return list(inputs)

    def preprocessor(self, src: Path, task):
        """What turns raw inputs into the model's feeds, read from the model directory `src`: the
        tokenizer. `reference` receives it (as `tokenizer`)."""
        from lifecycle import models

        return models.load_tokenizer(src, task.max_length)

    def export_graph(self, model, preprocessor, path: Path, opset: int) -> None:
        """Write the torch export of `model` to `path` (its inputs and dynamic axes are the task's)."""
        from lifecycle.components import onnx

        onnx.export_torch(model, preprocessor, path, opset, output=self.output)

    def write_runtime_files(self, out: Path, src: Path, preprocessor, task, input_names: list[str], model) -> None:
        """Everything lifecycle.edge needs beside model.onnx: schema.json, labels.json and the preprocessor's files."""
        from lifecycle.components import onnx

        onnx.write_runtime_files(out, src, preprocessor, task.max_length, input_names, self.graph_schema(model),
                                 self.labels(model))

    @property
    def split_scores(self) -> tuple[str, ...]:
        """Scores that depend on the examples: reported on test, and on validation as val_<name>."""
        return tuple(m for m in (*self.scores, *self.fidelity) if m not in self.split_free)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What export and quantize report for this task besides the ONNX metrics (latency, size)."""
        return (*self.scores, *self.fidelity, *(f"val_{m}" for m in self.split_scores))

    comparisons: ClassVar[tuple[str, ...]] = ()  # the metrics compare() reports

    def compare(self, model, preprocessor, ctx) -> dict:
        """For a task that no finetune stage trains (so no finetune reports its control and baseline):
        what export reports on test beside the model, named in `comparisons`."""
        return {}

    def torch_model(self, src: Path):
        """The eval-mode PyTorch module (with a Hugging Face `config`) that the graph reproduces."""
        raise NotImplementedError

    def reference(self, model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
        """The model's outputs for texts (float32 numpy): what parity compares the graph with."""
        raise NotImplementedError

    def width(self, model) -> int:
        """The size of the output's second axis: (batch, width)."""
        raise NotImplementedError

    def graph_schema(self, model) -> dict:
        """What schema.json says about the graph's output and how to use it (beside the inputs,
        max_length and padding that every text graph has): lifecycle.edge and the service read it."""
        return {"outputs": {self.output: {"dtype": "float32", "shape": ["batch", self.width(model)]}},
                **self.identity()}

    def identity(self) -> dict:
        """What schema.json says the model is: its task, inputs and answers kinds (what lifecycle.edge
        dispatches on), the edge method and the service route."""
        return {"task": self.name, "inputs_kind": self.inputs_kind, "answers_kind": self.answers_kind, "method": self.edge_method,
                "route": self.route}

    def labels(self, model) -> list[str]:
        return []

    def score(self, predictor, rows, pipeline, split: str, reference=None, out_dir: Path | None = None):
        """(metrics, outputs) of an ONNX predictor on `rows` of `split`: the quality `scores`, and the
        `fidelity` to `reference` (fp32 outputs of the same texts) when given. With `out_dir`, the
        per-example predictions a release gate pairs up are written there."""
        raise NotImplementedError

    def sample_predictions(self, predictor, texts: list[str]) -> list[dict]:
        """{"text", "answer"} per text, the answer as the edge method gives it (JSON)."""
        return [{"text": t, "answer": a} for t, a in zip(texts, predictor.answers(texts))]

    def prediction_details(self, predictor, rows, outputs) -> dict:
        """What the manifest records of a test run: the sample predictions (and whatever else the task keeps)."""
        return {"sample_predictions": self.sample_predictions(predictor, self.inputs(rows)[:SAMPLE_PREDICTIONS])}

    def encoder_scores(self, embed, pipeline) -> dict:
        """Scores of an encoder being trained (the contrastive objective) under this task; `embed(texts)`."""
        return {}

    def answer_scores(self, answers: list, rows, predictor) -> dict:
        """The quality `scores` of answers a service gave for `rows` (None: no answer, wrong by construction);
        `predictor`: the same model in-process. Tasks the serve stage does not score leave this out."""
        raise NotImplementedError

    def served_scores(self, answers: list, ctx, predictor) -> dict:
        """The quality `scores` of the answers a service gave for the test split of a serve stage's context
        `ctx`: `answer_scores` on it, unless the task needs more than the test split (kNN: the train split)."""
        return self.answer_scores(answers, ctx.task_data().splits["test"], predictor)

    def answers_agree(self, http, local, tolerance: float) -> tuple[bool, float]:
        """(whether an HTTP answer equals the in-process answer for the same text, largest difference)."""
        raise NotImplementedError

    @property
    def scores_answers(self) -> bool:
        """Whether the serve stage can score this task's HTTP answers (it implements `answer_scores` or
        `served_scores`)."""
        own = type(self)
        return own.answer_scores is not TaskPlugin.answer_scores or own.served_scores is not TaskPlugin.served_scores


class EmbeddingAnswers:
    """An embedder (texts or images): its graph's output is one pooled vector per input, the pooling recorded
    in schema.json and the manifest; an HTTP answer agrees with the in-process one number by number."""

    def width(self, model) -> int:
        return model.config.hidden_size

    def graph_schema(self, model) -> dict:
        return {**super().graph_schema(model), "pooling": model.pooling.model_dump()}

    def prediction_details(self, predictor, rows, outputs) -> dict:
        return {"pooling": predictor.schema.get("pooling"), **super().prediction_details(predictor, rows, outputs)}

    def answers_agree(self, http, local, tolerance):
        import numpy as np

        diff = float(np.abs(np.asarray(http, dtype=np.float64) - np.asarray(local, dtype=np.float64)).max())
        return diff <= tolerance, diff


class ClassAnswers:
    """A classifier whose labels live in its config (`id2label`), for task plug-ins that are not text
    classification (tables, images): width, labels, targets, scores against the fp32 reference and of HTTP
    answers, and the answer comparison, all as text classification does them. A plug-in says where a
    split's labels are (`split_labels`)."""

    def split_labels(self, split) -> list:
        raise NotImplementedError

    def width(self, model) -> int:
        return model.config.num_labels

    def labels(self, model) -> list[str]:
        id2label = model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def targets(self, predictor, split):
        """Class ids of a split's labels by the model's labels (-1: a class the model does not know)."""
        import numpy as np

        index = {name: i for i, name in enumerate(predictor.labels)}
        return np.array([index.get(v, -1) for v in self.split_labels(split)], dtype=np.int64)

    def score(self, predictor, rows, pipeline, split, reference=None, out_dir=None):
        from lifecycle.components.onnx import argmax_agreeing, max_abs_diff

        logits = predictor.logits(self.inputs(rows))
        metrics = self.evaluate(logits, self.targets(predictor, rows))
        if reference is not None:
            metrics.update(argmax_agreement=argmax_agreeing(logits, reference) / len(logits),
                           logit_max_abs_diff=max_abs_diff(logits, reference))
        return metrics, logits

    def answer_scores(self, answers, rows, predictor) -> dict:
        import numpy as np

        scores = np.array([[a["scores"][n] for n in predictor.labels] if a else [0.0] * len(predictor.labels)
                           for a in answers])
        return self.evaluate(np.log(np.clip(scores, 1e-12, 1)), self.targets(predictor, rows))

    def answers_agree(self, http, local, tolerance):
        return labels_agree(http, local, tolerance)


def labels_agree(http: dict, local: dict, tolerance: float) -> tuple[bool, float]:
    """Two classifier answers ({"label", "scores"}) agree: every class score within `tolerance`, and the same
    label unless the in-process top two scores are within `tolerance` of each other (a tie that rounding may
    break either way). Returns (agree, largest score difference)."""
    diff = max(abs(http["scores"].get(name, float("inf")) - p) for name, p in local["scores"].items())
    top = sorted(local["scores"].values(), reverse=True)
    margin = top[0] - top[1] if len(top) > 1 else float("inf")
    return not (diff > tolerance or (http["label"] != local["label"] and margin > tolerance)), diff


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
