"""What a pipeline file is before it is a Pipeline: YAML read with a bound on what aliases expand to,
`--set` overrides applied to the raw mapping, pydantic's errors as one line per field, and the files a
built pipeline names checked to exist (lifecycle.config builds and validates the Pipeline itself)."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from lifecycle import ConfigError

# Values a document may hold once its aliases are expanded. Anchors and aliases are fine in a pipeline
# file (one gate list shared by stages), but nine nested aliases of nine make a 1 KB file expand to
# 10**9 values, which validation then walks forever; so aliases are bounded rather than refused.
MAX_VALUES = 100_000


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand beyond MAX_VALUES values. The
    composed node graph shares aliased nodes, so it is counted (memoised per node) before anything
    is built from it."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias (&a [*a]) counts once, then refuses below
                children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else (
                    n.value if isinstance(n, yaml.SequenceNode) else [])
                sizes[id(n)] = min(MAX_VALUES + 1, 1 + sum(size(c) for c in children))
            return sizes[id(n)]

        if size(node) > MAX_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_VALUES:,} values (an alias bomb?); write the "
                                 "repeated parts out or share fewer of them")
        return super().construct_document(node)


def parse_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a pipeline") from None


def check_files(pipeline, source: str = "pipeline") -> None:
    """Every file the pipeline (a built lifecycle.config.Pipeline) names exists: each data source's files (globs match, a package source is
    installed) and pairs files. Run when a pipeline file is loaded and before a run starts, not in
    `build` (a run's recorded config is rebuilt to gate it where its data may be absent). A missing file
    is a data error (LifecycleError, exit 1), not an invalid config: the same file may be there tomorrow."""
    from lifecycle import LifecycleError

    for name, src in pipeline.data.items():
        if src.format == "mix":
            continue  # its parts are sources of their own
        try:
            src.files(pipeline)
        except LifecycleError as exc:
            raise LifecycleError(f"{source}: data.{name}: {exc}") from None
    from lifecycle.models import hub_pins

    for i, stage in enumerate(pipeline.stages):  # a Hub model not in the cache (offline) fails here, not mid-run
        try:
            hub_pins(stage, fetch=True)
        except LifecycleError as exc:
            raise LifecycleError(f"{source}: stages[{i}].{exc}") from None
    named = {f"stages[{i}].{field}": path for i, stage in enumerate(pipeline.stages) for field, path in stage.files().items()}
    if pipeline.task and pipeline.task.embedding and pipeline.task.embedding.pairs:
        named["task.embedding.pairs.path"] = pipeline.task.embedding.pairs.path
    for field, path in named.items():
        if not pipeline.resolve(path).is_file():
            raise LifecycleError(f"{source}: {field}: no file {pipeline.resolve(path)} "
                                 "(paths are relative to the pipeline file)")


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        # A discriminated union puts the tag (the stage kind) in the path: stages.2.finetune.lr -> stages[2].lr
        if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int) and isinstance(loc[2], str):
            loc.pop(2)
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        lines.append(f"  {path}: {msg}" if path else f"  {msg}")  # the pipeline's own checks name their field
    return "\n".join(lines)


def apply_override(raw: dict, item: str) -> None:
    """Apply `a.b.c=value` to the raw mapping. `stages.<name>` picks a stage by name (or kind)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. stages.finetune.train.lr=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, key)
            if last:
                node[idx] = parse_yaml(value, f"--set {key}")
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = parse_yaml(value, f"--set {key}")
                return
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping or list")


def _list_index(items: list, part: str, key: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, entry in enumerate(items):
        if isinstance(entry, dict) and (entry.get("name") or entry.get("kind")) == part:
            return i
    raise ConfigError(f"--set {key}: no stage named '{part}'")
