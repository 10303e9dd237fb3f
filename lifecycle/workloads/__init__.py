"""Workloads, each in its own wing, and the two tables the rest of lifecycle reads.

A wing is one folder (`text/`, `decoders/`, `tables/`, `images/`) holding a workload's task
declarations, models and recipes, side by side and copy-paste-modify style (as torchtune's recipes):
no wing imports another. Its `__init__.py` declares two things:

- `TASKS`: the tasks it serves (lifecycle.tasks.Task declarations), by `name`;
- `RECIPES`: `Recipe` rows, each the run function of one training stage kind for one input kind and
  one objective (pretrain, adapt) or answers kind (finetune, distill), the exact metric names it
  reports, and the stage settings it refuses.

`TASKS` and `RECIPES` below gather the built-in wings, then every package that registers a workload
through the `lifecycle.workloads` entry-point group (an object with the same two attributes), so a
third-party workload needs no edit here. The training stages are a typed Config plus `recipe(...)`;
`lifecycle validate` refuses a gate on a metric the chosen recipe does not report, `lifecycle recipes`
prints the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

ENTRY_POINTS = "lifecycle.workloads"
BUILT_IN = ("lifecycle.workloads.text", "lifecycle.workloads.decoders", "lifecycle.workloads.tables",
            "lifecycle.workloads.images", "lifecycle.workloads.audio")
# a data source's kind (schema.DataSource.reads) -> the inputs kind its rows are
SOURCE_INPUTS = {"text": "text", "table": "rows", "image": "images", "audio": "audio"}


@dataclass(frozen=True)
class Recipe:
    stage: str  # the stage kind it runs under: pretrain, adapt, finetune, distill
    inputs: str  # what the model reads: text, prompts, rows, images
    key: str  # pretrain / adapt: the objective; finetune / distill: the task's answers kind
    run: str  # "module:function", imported when the stage runs: run(cfg, parent, ctx) -> (metrics, details)
    metrics: frozenset[str]  # every metric it reports (a gate on another is refused at validate)
    summary: str = ""
    # (the stage's config, its data sources by field) -> "field: why" for a setting or a source this recipe
    # does not honour, else None
    refuses: Callable[[Any, dict], str | None] | None = field(default=None, compare=False)

    def __call__(self, cfg, parent, ctx) -> tuple[dict, dict]:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)(cfg, parent, ctx)


@dataclass(frozen=True)
class Registry:
    tasks: dict[str, Any]  # name -> lifecycle.tasks.Task
    recipes: dict[tuple[str, str, str], Recipe]  # (stage, inputs, key) -> Recipe
    origin: dict[str, str]  # task or recipe -> the wing or entry point that declared it


@cache
def registry() -> Registry:
    """The built-in wings, then the entry points (a name declared twice is an error naming both)."""
    from importlib.metadata import entry_points

    wings = [(name, importlib.import_module(name)) for name in BUILT_IN]
    for ep in entry_points(group=ENTRY_POINTS):
        try:
            wings.append((f"entry point {ep.name} ({ep.value})", ep.load()))
        except Exception as e:  # a broken plug-in names itself instead of a bare traceback
            from lifecycle import LifecycleError

            raise LifecycleError(f"workload entry point '{ep.name}' ({ep.value}) failed to load: {e}") from e
    tasks, recipes, origin = {}, {}, {}
    for where, wing in wings:
        for task in getattr(wing, "TASKS", ()):
            _claim(origin, f"task {task.name}", where)
            tasks[task.name] = task
        for recipe in getattr(wing, "RECIPES", ()):
            key = (recipe.stage, recipe.inputs, recipe.key)
            _claim(origin, f"recipe {'/'.join(key)}", where)
            recipes[key] = recipe
    return Registry(tasks, recipes, origin)


def _claim(origin: dict, what: str, where: str) -> None:
    if what in origin:
        from lifecycle import LifecycleError

        raise LifecycleError(f"{what} is declared twice: by {origin[what]} and by {where}")
    origin[what] = where


def task(name: str):
    """The task declaration for `task: {type: name}`."""
    return registry().tasks[name]


def tasks() -> list:
    """Every task declaration, built-in wings first."""
    return list(registry().tasks.values())


def task_names() -> tuple[str, ...]:
    return tuple(registry().tasks)


def trained_tasks(stage: str) -> tuple[str, ...]:
    """The tasks whose inputs and answers kinds have a recipe under `stage` (finetune, distill)."""
    return tuple(t.name for t in registry().tasks.values() if (stage, t.inputs_kind, t.answers_kind) in registry().recipes)


def recipe(stage: str, inputs: str, key: str) -> Recipe | None:
    return registry().recipes.get((stage, inputs, key))


def recipes_for(stage: str) -> list[Recipe]:
    return [r for k, r in registry().recipes.items() if k[0] == stage]


def declared_objective(stage: str, objective: str | None) -> str | None:
    """`objective` of a pretrain or adapt stage, when some workload declares a recipe for it (a ValueError
    listing those that are, else); which input kind it reads is checked against the data later."""
    known = sorted({r.key for r in recipes_for(stage)} | {"mlm", "clm"})
    if objective is not None and objective not in known:
        raise ValueError(f"'{objective}' is no {stage} objective; the recipe table has {', '.join(known)}")
    return objective
