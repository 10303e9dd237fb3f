"""Building blocks of a pipeline config, kept free of heavy imports and of the stage registry so that
stage modules can subclass `StageBase` without an import cycle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BOUND_KEYS = ("min", "max", "max_drop", "min_gain", "max_ratio", "min_ratio")

# numpy's seeds are 0..2**32-1: a negative one validates as an int and crashes the run.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# What a run directory holds besides its stages' artifacts (<run>/<stage name>/): a stage named like
# one of these would overwrite it. Suffixes: a stage's build directory (<name>.tmp, <name>.seed5.tmp),
# the previous artifact during the swap (<name>.old) and half-written JSON (<file>.part).
RUN_FILES = frozenset({"pipeline.json", "report.json", "report.md", "junit.xml", "run.sig", "plots", "metrics",
                       "manifest.json", ".scratch", ".cache", ".lock"})
RUN_SUFFIXES = (".tmp", ".old", ".part")


def plain_name_problem(name: str, reserved: bool = True) -> str | None:
    """Why `name` cannot be a directory name inside a run (or workdir), or None. Plain names only:
    an absolute path, a separator or `..` would write (and, on the atomic swap, delete) outside it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        return (f"'{name}' is not a plain name; use letters, digits, '_', '.' and '-' (starting with a letter or "
                "digit), no '/' and no '..'")
    low = name.lower()  # case-insensitive file systems: Report.json is report.json
    if reserved and (low in RUN_FILES or low.endswith(RUN_SUFFIXES)):
        return f"'{name}' is a file name the run directory uses itself; choose another name"
    return None


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are checked on assignment, and a
    number must be finite: YAML's `.inf` / `.nan` pass every `gt=0` bound (and NaN fails no comparison),
    so one such value would train a NaN model or make a gate that cannot fail."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Gate(Strict):
    """One bound on one metric, checked after its stage ran."""

    metric: str
    min: float | None = None  # value >= min
    max: float | None = None  # value <= max
    max_drop: float | None = None  # value >= reference - max_drop
    min_gain: float | None = None  # value >= reference + min_gain
    max_ratio: float | None = None  # value <= reference * max_ratio
    min_ratio: float | None = None  # value >= reference * min_ratio
    # reference for relative bounds: "previous", an earlier stage's name, or "release:NAME" (a registry
    # alias or version, see lifecycle.release: compared on the same test examples, with an interval)
    vs: str = "previous"
    # The reference's metric when it is not `metric`: comparing across runtimes (ort_latency_p50_ms of an
    # ONNX stage against torch_latency_p50_ms of a PyTorch one) must be asked for by naming both.
    reference_metric: str | None = Field(None, exclude_if=lambda v: v is None)
    on_fail: Literal["stop", "warn"] = "stop"
    # A relative latency gate re-times candidate and reference side by side; when the ratio's interval
    # still straddles the bound after the re-measure budget, the verdict is inconclusive: a failure
    # unless this says warn.
    on_inconclusive: Literal["stop", "warn"] = Field("stop", exclude_if=lambda v: v == "stop")
    # With `seeds: [...]` a stage reports <metric>_ci_low/_ci_high; binding the lower bound keeps a
    # lucky seed from blessing a release.
    bound: Literal["mean", "lower_ci", "upper_ci"] = "mean"

    @model_validator(mode="after")
    def _one_bound(self) -> Gate:
        given = [k for k in BOUND_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a gate needs exactly one of {', '.join(BOUND_KEYS)}; got {given or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in BOUND_KEYS if getattr(self, k) is not None)

    @property
    def threshold(self) -> float:
        return getattr(self, self.kind)

    @property
    def relative(self) -> bool:
        return self.kind not in ("min", "max")

    @property
    def ref_key(self) -> str:
        return self.reference_metric or self.metric

    @property
    def interleaved(self) -> bool:
        """A relative latency bound: judged on a fresh side-by-side measurement, not on recorded numbers."""
        return self.kind in ("max_ratio", "min_ratio") and "latency" in self.metric

    @property
    def release(self) -> str | None:
        """The registry alias or version of a `vs: "release:NAME"` gate, else None."""
        return self.vs.removeprefix("release:") if self.vs.startswith("release:") else None

    @property
    def value_key(self) -> str:
        """The metric key the gate reads: the mean, or a confidence bound of it."""
        return {"mean": self.metric, "lower_ci": f"{self.metric}_ci_low", "upper_ci": f"{self.metric}_ci_high"}[
            self.bound
        ]


# What an artifact holds. A stage declares which of these it reads from its parent and which it writes
# (both may depend on its config and on the task type), so `lifecycle validate` refuses a chain that
# could only fail at run time, or silently produce nonsense (a masked-LM exported as a classifier).
Holds = Literal["masked-lm", "causal-lm", "encoder", "classifier", "regressor", "onnx-classifier", "onnx-encoder",
                "onnx-regressor", "onnx-anomaly-scorer", "onnx-generator", "service-check"]
# A task's name: one that lifecycle.workloads registers (the built-in wings' and any entry point's), checked
# when the pipeline is loaded (config), since this module sits below the registry.
TaskType = str
# a Hugging Face model directory
HF_HOLDS: tuple[Holds, ...] = ("masked-lm", "causal-lm", "encoder", "classifier", "regressor")
# model.onnx + runtime files (lifecycle.edge)
ONNX_HOLDS: tuple[Holds, ...] = ("onnx-classifier", "onnx-encoder", "onnx-regressor", "onnx-anomaly-scorer",
                                  "onnx-generator")
# Where a chain gets each kind: the hint of a refused chain.
MADE_BY: dict[str, str] = {
    "masked-lm": "pretrain with a bert-* preset (`objective: masked-feature` for a table, `masked-image` for "
                 "images), or adapt",
    "causal-lm": "pretrain with a gpt-* preset, or adapt",
    "encoder": "pretrain or adapt with `objective: contrastive`",
    "classifier": "finetune or distill",
    "regressor": "finetune under `task: {type: tabular-regression}`",
    "onnx-classifier": "export under a classification task, or quantize after it",
    "onnx-encoder": "export under `task: {type: embedding}` or `image-embedding`, or quantize after it",
    "onnx-regressor": "export under `task: {type: tabular-regression}`, or quantize after it",
    "onnx-anomaly-scorer": "export under `task: {type: tabular-anomaly}`, or quantize after it",
    "onnx-generator": "export under `task: {type: generation}` (a decoder with its KV cache), or quantize after it",
    "service-check": "serve",
}


def artifact_kind(holds: str) -> str:
    """The manifest's `kind` for an artifact holding `holds`: the family every artifact reader checks
    (hf-model: a model directory; onnx-model: what lifecycle.edge opens), unchanged by the finer kinds."""
    return "onnx-model" if holds in ONNX_HOLDS else "hf-model" if holds in HF_HOLDS else holds


def one_of(kinds) -> str:
    kinds = list(kinds)
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


@dataclass(frozen=True)
class Trains:
    """What a training stage trains, as the stage declares it (lifecycle.planning reads this; the objective
    and head follow from what the stage `produces`: masked-lm, causal-lm, encoder or classifier)."""

    train: Any  # the stage's TrainConfig (batch size, accumulation, steps, precision, checkpointing)
    source: Any = None  # a ModelSource the stage starts from; None: the parent stage's model
    student: Any = None  # distill: the student built from the parent (the teacher)
    data: str | None = None  # the source it trains on; None: the task's labelled data
    seq: int | None = None  # tokens per example; None: the task's max_length
    masked_fraction: float = 1.0  # share of positions a masked-LM head is computed at
    lora: Any = None  # LoRA settings: only the adapters (and the head) train
    adapters: bool = False  # whether the stage can train LoRA adapters instead of every weight


class StageBase(Strict):
    """Fields every stage has. A stage module subclasses this with `kind: Literal[...]` and its own fields,
    and declares what it reads and writes (`accepts`, `produces`) and which task types it works for."""

    reads_parent: ClassVar[bool] = True  # False: the stage starts from nothing (pretrain)
    # Task types the stage works for; None: it needs no `task:` section (and runs under any).
    tasks: ClassVar[tuple[TaskType, ...] | None] = None
    # Training stages run on every rank under torchrun (the Trainer does DDP); the others run on rank 0.
    distributed: ClassVar[bool] = False

    name: str | None = Field(None, description="unique stage name; defaults to the kind")
    parent: str | None = Field(None, description="stage whose artifact this one reads; defaults to the previous")
    gates: list[Gate] = []
    # Run the stage once per seed: metrics become means with <metric>_std/_ci_low/_ci_high (95%, across
    # seeds) and the artifact keeps the first seed's files. For training stages; costs len(seeds) runs.
    seeds: list[Seed] | None = Field(None, min_length=2)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (problem := plain_name_problem(name)):
            raise ValueError(problem)  # the artifact is written to <run>/<name>/
        return name

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        # A repeated seed is the same run counted twice: std 0 and an interval that clears any gate.
        if seeds is not None and len(set(seeds)) < len(seeds):
            repeated = sorted({s for s in seeds if seeds.count(s) > 1})
            raise ValueError(f"seed {repeated[0]} is repeated; the runs of a stage need different seeds")
        return seeds

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]

    def metric_names(self, task: TaskType | None = None) -> set[str]:
        """Metrics this stage reports under the pipeline's task (a stage without a recipe; see `recipe_key`);
        gates on any other metric are config errors."""
        raise NotImplementedError

    def needs_parent(self) -> bool:
        return self.reads_parent

    def served(self) -> tuple[TaskType, ...] | None:
        """The task types the stage works for (None: it needs no `task:`); `tasks` unless it asks a table."""
        return self.tasks

    def recipe_key(self, task: TaskType | None, sources: dict, consumed: Holds | None) -> tuple[str, str] | None:
        """(inputs kind, objective or answers kind) of the recipe the stage runs (lifecycle.workloads), given the
        pipeline's task, the data sources it names by field (`data_refs`) and what its parent holds; None: the
        stage runs no recipe, and `metric_names` says what it reports."""
        return None

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        """What the stage can read from its parent under the pipeline's task type."""
        raise NotImplementedError

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        """What its artifact holds, given what the parent's holds (None: no parent, e.g. `model:` given).
        Called only with `consumed` in `accepts(task)` or None."""
        raise NotImplementedError

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        """A stage-specific fix when the parent holds `consumed`, which the stage does not accept."""
        return None

    def task_hint(self, task: TaskType) -> str | None:
        """A stage-specific fix when the pipeline's task type is not one of `tasks`."""
        return None

    def trains(self) -> Trains | None:
        """What the stage trains (None: it trains nothing): read by `lifecycle plan`."""
        return None

    def adopt_task(self, task: TaskType | None) -> None:
        """Settle defaults that depend on the pipeline's task type (called once, when the pipeline is loaded)."""

    def task_problem(self, task: TaskType) -> str | None:
        """"field: why it cannot work under this task type" for a setting the task rules out, else None."""
        return None

    def data_refs(self) -> dict[str, tuple[str, bool]]:
        """Data sources the stage names: field path -> (source name, whether it must be labelled)."""
        return {}

    def files(self) -> dict[str, str]:
        """Files the stage reads besides data sources: field path -> path (relative to the pipeline file)."""
        return {}


class Pairs(Strict):
    """Text pairs from a jsonl / csv / tsv file (path relative to the pipeline file): scored pairs for
    Spearman evaluation, or (anchor, positive[, hard negative]) pairs for supervised contrastive training."""

    format: Literal["jsonl", "csv", "tsv"] = "jsonl"
    path: str
    text1_field: str = "text1"
    text2_field: str = "text2"
    score_field: str | None = None  # similarity score of the pair (evaluation: Spearman correlation)
    negative_field: str | None = None  # a hard negative for text1 (supervised contrastive training)
    limit: int | None = Field(None, gt=0, description="read at most this many pairs")


class EmbeddingTask(Strict):
    """How an embedding model is scored (`task: {type: embedding, embedding: {...}}`)."""

    # kNN label accuracy: each test text takes the majority label of its k most cosine-similar train
    # texts. Small k follows local structure (noisier); large k smooths towards the class prior.
    k: int = Field(5, gt=0)
    limit: int | None = Field(None, gt=0, description="at most this many texts per split for kNN (each costs a forward pass)")
    pairs: Pairs | None = None  # scored pairs: adds `spearman` (rank correlation of cosine with the scores)


def unset(value) -> bool:
    """For `Field(None, exclude_if=unset)`: an optional field added later stays out of dumps (and cache
    keys) while unset, so existing pipelines keep their cached artifacts."""
    return value is None


class RougeL(Strict):
    """ROUGE-L of greedy answers against the records' responses, reported by finetune for the model before and
    after (`rouge_l_before`, `rouge_l`, `rouge_l_gain`), beside the lead-sentences baseline."""

    records: int = Field(100, gt=0)  # test records answered per model; each costs up to answer_tokens decoder steps
    answer_tokens: int = Field(64, gt=0)  # greedy tokens per answer (an answer also ends at end-of-text)
    # The record field whose first `lead_sentences` sentences are the baseline answer (`baseline_lead_rouge_l`);
    # None: no baseline.
    lead_field: str | None = None
    lead_sentences: int = Field(2, gt=0)


class GenerationTask(Strict):
    """How a causal LM is fine-tuned and scored (`task: {type: generation, generation: {...}}`). The task's
    source is prompt/response records (jsonl / csv / pubmedqa: `prompt_field`, `response_field`) or plain text
    (a corpus: language modelling, every token a target)."""

    # None: a plain-text source, no prompt (language modelling). A list: those fields, one per line (a list
    # value, as pubmedqa's CONTEXTS, joined by spaces).
    prompt_field: str | list[str] | None = None
    response_field: str = "response"
    # Records' prompts cut to their first N words (the tail of a long context goes first), so that prompt and
    # answer fit the context; None: prompts as they are (a longer one is truncated with its response).
    max_prompt_words: int | None = Field(None, gt=0, exclude_if=unset)
    rouge: RougeL | None = Field(None, exclude_if=unset)  # records with references: ROUGE-L at finetune

    @model_validator(mode="after")
    def _records_settings(self) -> GenerationTask:
        if self.prompt_field is None and (self.rouge is not None or self.max_prompt_words is not None):
            raise ValueError("rouge / max_prompt_words: for prompt/response records; set `prompt_field`")
        if self.prompt_field == []:
            raise ValueError("prompt_field: name at least one field (or null for plain text)")
        return self
    separator: str = "\n"  # between prompt and response in the training text (the model learns to answer after it)
    # Prompts whose greedy continuations are compared (generation_agreement) and sampled into the manifest;
    # each costs new_tokens decoder steps per model compared.
    prompts: int = Field(16, gt=0)
    new_tokens: int = Field(16, gt=0)  # greedy tokens per prompt for generation_agreement
    prompt_words: int = Field(8, gt=0)  # plain text: the first words of a held-out text are its prompt
    limit: int | None = Field(256, gt=0, description="held-out texts per split scored for perplexity (None: all)")


class Task(Strict):
    """The downstream task the model is trained and measured on."""

    type: TaskType = "classification"
    data: str = Field(description="name of a labelled source in `data`")
    max_length: int = Field(128, gt=0, description="tokens per text; longer texts are truncated")
    embedding: EmbeddingTask | None = Field(None, exclude_if=unset)
    generation: GenerationTask | None = Field(None, exclude_if=unset)

    def stray_settings(self, own: str) -> str | None:
        """The first key of another task type's settings given here; `own`: the key this type reads (each
        task type's settings sit under a key named after it, `embedding: {...}`, unless its plug-in says)."""
        settings = {key for key in type(self).model_fields if key not in ("type", "data", "max_length")}
        return next(iter(sorted({key for key in settings if getattr(self, key, None) is not None} - {own})), None)

    @property
    def embedding_settings(self) -> EmbeddingTask:
        return self.embedding or EmbeddingTask()

    @property
    def generation_settings(self) -> GenerationTask:
        return self.generation or GenerationTask()
