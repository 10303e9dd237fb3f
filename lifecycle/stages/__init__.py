"""Stage kinds. Each module holds a typed `Config` (kind, fields, the metrics it reports) and one
`run(cfg, parent, ctx)` function. Modules import only pydantic at top level; torch and friends are
imported inside `run`, so loading a pipeline file stays fast."""

from __future__ import annotations

import importlib

# kind -> module; the order is the pipeline order a user would normally write.
KINDS = {
    "pretrain": "lifecycle.stages.pretrain",
    "adapt": "lifecycle.stages.adapt",
    "finetune": "lifecycle.stages.finetune",
    "distill": "lifecycle.stages.distill",
    "export": "lifecycle.stages.export",
    "quantize": "lifecycle.stages.quantize",
    "serve": "lifecycle.stages.serve",
}


def available() -> dict[str, str]:
    """The kinds whose module exists in this install (stage modules land one issue at a time)."""
    out = {}
    for kind, mod in KINDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[kind] = mod
    return out


def module(kind: str):
    return importlib.import_module(available()[kind])


def stage_configs() -> list[type]:
    return [module(kind).Config for kind in available()]
