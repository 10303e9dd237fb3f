"""Pipeline configuration: pydantic models, YAML loading, `--set` overrides, cross-stage checks.

YAML and the Python API build the same `Pipeline` object; everything is validated when it is built,
so a misspelt key or a gate on a metric the stage cannot produce fails before any stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from lifecycle import ConfigError
from lifecycle.data.sources import DataSource
from lifecycle.pipeline_file import apply_override, check_files, format_errors, parse_yaml
from lifecycle.schema import MADE_BY, Gate, Holds, Seed, Strict, Task, TaskType, one_of, plain_name_problem
from lifecycle.stages import stage_configs
from lifecycle.tracking import Tracking

# The stage union is built from the registered stage modules (each imports only pydantic at top level).
StageConfig = Annotated[Union[tuple(stage_configs())], Field(discriminator="kind")]  # noqa: UP007


class Pipeline(Strict):
    """A whole pipeline: its data, task and ordered stages, validated when built (as a YAML file is)."""

    name: str = Field(description="a plain name: the run is written to <workdir>/<name>")
    seed: Seed = 0
    deterministic: bool = False  # seeds + torch deterministic algorithms; identical artifacts on CPU
    workdir: str = "runs"  # relative to the current directory; each run writes <workdir>/<name>/
    data: dict[str, DataSource] = {}
    task: Task | None = None
    tracking: Tracking = Tracking()
    stages: list[StageConfig] = Field(min_length=1)  # type: ignore[valid-type]

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # `..` or a separator would put the run outside the workdir (and `.` onto the workdir itself).
        if problem := plain_name_problem(name, reserved=False):
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _check_graph(self) -> Pipeline:
        self._check_data()
        task = self.task.type if self.task else None
        holds: dict[str, Holds] = {}
        seen: dict[str, Any] = {}
        reported: dict[str, set[str]] = {}  # stage -> the metrics it reports
        for i, stage in enumerate(self.stages):
            where = f"stages[{i}]"
            stage.adopt_task(task)
            if stage.label in seen:
                raise ValueError(f"{where}.name: '{stage.label}' is used twice; give each stage a unique name")
            served = stage.served()
            if served is not None and task is None:
                raise ValueError(f"task: missing; stage '{stage.label}' ({where}, {stage.kind}) needs it: add "
                                 "`task: {data: SOURCE}` naming a labelled data source")
            if served is not None and task not in served:
                hint = stage.task_hint(task) or "remove the stage or change `task.type`"
                raise ValueError(f"task.type: stage '{stage.label}' ({where}, {stage.kind}) works for "
                                 f"{one_of(served)} tasks, not {task}; {hint}")
            if served is not None and (problem := stage.task_problem(task)):
                raise ValueError(f"{where}.{problem}")
            for field, (name, labelled) in stage.data_refs().items():
                self._check_source(f"{where}.{field}", name, labelled)
            consumed = self._consumed(stage, where, seen, holds, task)
            holds[stage.label] = stage.produces(consumed, task)
            recipe = self._recipe(stage, where, consumed)
            reported[stage.label] = set(recipe.metrics) if recipe else stage.metric_names(task)
            for j, gate in enumerate(stage.gates):
                gwhere = f"{where}.gates[{j}]"
                if gate.metric not in reported[stage.label]:
                    known = ", ".join(sorted(reported[stage.label]))
                    by = f"its recipe {recipe.run} reports" if recipe else "it reports"
                    raise ValueError(f"{gwhere}.metric: '{stage.kind}' cannot produce '{gate.metric}' ({by} {known})")
                if gate.release is not None:
                    _check_release_gate(gate, gwhere)
                    continue
                # an interval bound reads <metric>_ci_low/_ci_high: across seeds, or as the stage reports it
                if gate.bound != "mean" and not stage.seeds and gate.value_key not in reported[stage.label]:
                    raise ValueError(f"{gwhere}.bound: '{gate.bound}' needs `seeds: [...]` (2 or more) on the stage")
                if gate.relative:
                    ref = self._reference(stage, gate, seen)
                    if ref is None:
                        raise ValueError(f"{gwhere}.vs: '{gate.vs}' is not an earlier stage")
                    if gate.ref_key not in reported[ref.label]:
                        cross = _runtime(gate.metric) and any(_runtime(m) for m in reported[ref.label]
                                                             if m.split("_", 1)[-1] == gate.metric.split("_", 1)[-1])
                        hint = (" (it measures another runtime: name the reference's metric with `reference_metric` "
                                "to compare across runtimes)") if cross else ""
                        raise ValueError(f"{gwhere}.vs: stage '{ref.label}' does not report '{gate.ref_key}'{hint}")
            seen[stage.label] = stage
        return self

    def recipe(self, stage, consumed: Holds | None = None):
        """The recipe `stage` runs (lifecycle.workloads), or None for a stage that runs none (or has none)."""
        from lifecycle import workloads

        key = stage.recipe_key(self.task.type if self.task else None, self._sources(stage), consumed)
        return None if key is None else workloads.recipe(stage.kind, *key)

    def _sources(self, stage) -> dict:
        """The data sources a stage names, by field (`data_refs`)."""
        return {field: self.data[name] for field, (name, _) in stage.data_refs().items()}

    def _recipe(self, stage, where: str, consumed: Holds | None):
        """`recipe`, refused (naming the stage) when the table has none or the recipe refuses a setting."""
        from lifecycle import workloads

        sources = self._sources(stage)
        key = stage.recipe_key(self.task.type if self.task else None, sources, consumed)
        if key is None:
            return None
        recipe = workloads.recipe(stage.kind, *key)
        if recipe is None:
            inputs, wanted = key
            have = [r.key for r in workloads.recipes_for(stage.kind) if r.inputs == inputs]
            offer = f"for {inputs}: {one_of(have)}" if have else f"none reads {inputs}"
            raise ValueError(f"{where}: '{stage.kind}' has no recipe for {inputs} with {wanted} ({offer}; "
                             "`lifecycle recipes` lists them)")
        if recipe.refuses and (problem := recipe.refuses(stage, sources)):
            raise ValueError(f"{where}.{problem}")
        return recipe

    def _consumed(self, stage, where: str, earlier: dict[str, Any], holds: dict[str, Holds],
                  task: TaskType | None) -> Holds | None:
        """What the stage reads from its parent, refused (naming the stage) when it cannot read it."""
        parent = self.parent_of(stage, earlier)
        if not stage.needs_parent():
            return None
        accepted = stage.accepts(task)
        if parent is None:
            raise ValueError(f"{where}: stage '{stage.label}' ({stage.kind}) needs a parent holding {one_of(accepted)} "
                             f"({MADE_BY[accepted[0]]}); add one before it or name one with `parent:`")
        consumed = holds[parent.label]
        if consumed not in accepted:
            under = f" (task type {task})" if len(stage.served() or ()) > 1 else ""
            hint = stage.chain_hint(consumed, task) or (f"read from a stage holding {accepted[0]} "
                                                        f"({MADE_BY[accepted[0]]}) with `parent:`, or reorder")
            raise ValueError(f"{where}.parent: '{stage.kind}'{under} reads {one_of(accepted)}, but its parent "
                             f"'{parent.label}' holds {consumed}; {hint}")
        return consumed

    def _check_data(self) -> None:
        """Names only (no file is read here: `lifecycle gate` rebuilds a run's config where its data may
        be absent); `check_files` reads the disk."""
        for name, src in self.data.items():
            for j, part in enumerate(src.sources):
                if part not in self.data:
                    raise ValueError(f"data.{name}.sources[{j}]: no data source named '{part}' (have {sorted(self.data)})")
                if self.data[part].format == "mix":
                    raise ValueError(f"data.{name}.sources[{j}]: '{part}' is itself a mix; list its sources directly")
        if self.task:
            from lifecycle import workloads

            if self.task.type not in workloads.task_names():
                raise ValueError(f"task.type: '{self.task.type}' is not a task lifecycle knows (have "
                                 f"{', '.join(workloads.task_names())}; a workload package adds more through the "
                                 f"'{workloads.ENTRY_POINTS}' entry points)")
            plugin = workloads.task(self.task.type)
            self._check_source("task.data", self.task.data, labelled=plugin.inputs.labelled)
            stray = self.task.stray_settings(plugin.settings.key or plugin.name)
            if stray:
                raise ValueError(f"task.{stray}: settings for `type: {stray}` only")
            if problem := plugin.settings.problem(self.task):
                raise ValueError(f"task.{problem}")

            reads, holds = plugin.inputs.reads, self.data[self.task.data].reads
            if holds != reads:
                what = {"table": "a table", "image": "images", "text": "text", "audio": "audio"}
                hint = {"table": " (one with `table: {target: COLUMN}`)", "image": " (imagefolder or sklearn-digits)",
                        "audio": " (audiofolder or audiofiles)"}
                raise ValueError(f"task.data: '{self.task.data}' is {what[holds]}, but a "
                                 f"{self.task.type} task reads {reads}; name a {reads} source" + hint.get(reads, ""))

    def _check_source(self, field: str, name: str, labelled: bool) -> None:
        if name not in self.data:
            raise ValueError(f"{field}: no data source named '{name}' (have {sorted(self.data)})")
        if labelled and not self.data[name].labelled:
            what = "a mix of corpora" if self.data[name].format == "mix" else "a corpus (label_field: null)"
            raise ValueError(f"{field}: '{name}' is {what}; name a source with labels (a `label_field`)")

    def holds(self, stage) -> Holds:
        """What the stage's artifact holds (the manifest's `holds`), as the chain of declarations says."""
        parent = self.parent_of(stage)
        consumed = self.holds(parent) if parent is not None and stage.needs_parent() else None
        return stage.produces(consumed, self.task.type if self.task else None)

    def parent_of(self, stage, earlier: dict[str, Any] | None = None):
        earlier = earlier if earlier is not None else self.earlier(stage)
        if stage.parent is not None:
            if stage.parent not in earlier:
                raise ValueError(f"stage '{stage.label}': parent '{stage.parent}' is not an earlier stage")
            return earlier[stage.parent]
        if not stage.needs_parent() or not earlier:
            return None
        return list(earlier.values())[-1]

    def earlier(self, stage) -> dict[str, Any]:
        out = {}
        for s in self.stages:
            if s is stage:
                break
            out[s.label] = s
        return out

    def _reference(self, stage, gate: Gate, earlier: dict[str, Any]):
        if gate.vs == "previous":
            return self.parent_of(stage, earlier) or (list(earlier.values())[-1] if earlier else None)
        return earlier.get(gate.vs)

    def reference_name(self, stage, gate: Gate) -> str | None:
        ref = self._reference(stage, gate, self.earlier(stage))
        return ref.label if ref is not None else None

    def stage(self, name: str):
        for s in self.stages:
            if s.label == name:
                return s
        raise ConfigError(f"no stage named '{name}' (have {[s.label for s in self.stages]})")

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve(self, path: str | Path) -> Path:
        """Paths in a pipeline file are relative to the file, so a pipeline runs from any directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p).resolve()


def _runtime(metric: str) -> str | None:
    """The runtime a latency metric names (torch_latency_p50_ms -> torch), or None."""
    head = metric.split("_", 1)[0]
    return head if head in ("torch", "ort", "http") and "latency" in metric else None


def _check_release_gate(gate: Gate, where: str) -> None:
    """`vs: "release:NAME"`: a relative bound against a registry entry (no earlier stage needed); a
    confidence bound comes from the paired comparison, so it needs no `seeds`, but only metrics with
    per-example test predictions have one."""
    from lifecycle.release import PAIRED

    if not gate.release:
        raise ValueError(f"{where}.vs: 'release:' needs an alias or version, e.g. release:production")
    if not gate.relative:
        raise ValueError(f"{where}: a release gate compares with the release: use max_drop, min_gain, max_ratio "
                         f"or min_ratio, not {gate.kind}")
    if gate.bound != "mean" and (gate.metric not in PAIRED or gate.kind not in ("max_drop", "min_gain")):
        raise ValueError(f"{where}.bound: '{gate.bound}' against a release needs a max_drop or min_gain gate on "
                         f"{' / '.join(PAIRED)} (paired per-example comparison)")


# ----------------------------------------------------------------------------------------------- loading
MAX_FILE_BYTES = 1 << 20  # the largest shipped pipeline is a few KB


def load(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a pipeline file is a short YAML file")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8); pass the pipeline's YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with name, data, task and stages")
    for item in overrides or []:
        apply_override(raw, item)
    pipeline = build(raw, base_dir=path.resolve().parent, source=str(path))
    check_files(pipeline, str(path))
    return pipeline


def build(raw: dict, base_dir: Path | None = None, source: str = "pipeline") -> Pipeline:
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid pipeline\n" + format_errors(exc)) from None
    pipeline._base_dir = Path(base_dir or Path.cwd())
    return pipeline
