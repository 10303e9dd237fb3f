"""lifecycle: one gated pipeline from pre-training to a served model.

    import lifecycle as lc

    pipeline = lc.Pipeline(name=..., data={...}, task=lc.Task(...), stages=[lc.Pretrain(...), lc.Finetune(...)])
    lc.run(pipeline)                      # lifecycle run
    lc.gate("runs/NAME")                  # lifecycle gate: the release verdict
    lc.promote("runs/NAME", "production") # lifecycle promote

The names in `__all__` are the public API (see lifecycle/api.py); every other module is internal.
"""

import os
from typing import TYPE_CHECKING

# Both must be set before bentoml / onnxruntime are imported anywhere: onnxruntime's Linux wheel
# sends telemetry unless the variable is set at import time (disable_telemetry_events() is too late).
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"


class LifecycleError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback (exit 1)."""


class ConfigError(LifecycleError):
    """An invalid pipeline file, field or override (exit 2)."""


class GateFailed(LifecycleError):
    """A gate with on_fail: stop did not pass (exit 3)."""


__all__ = [
    # running and releasing
    "run", "load_run", "gate", "promote", "Predictor",
    # a pipeline and its stages
    "Pipeline", "Pretrain", "Adapt", "Finetune", "Distill", "Export", "Quantize", "Serve",
    # what they are configured with
    "DataSource", "Split", "Task", "Gate", "ModelSource", "TokenizerSpec", "TrainConfig", "LoRA", "Control", "Student",
    # what the functions return
    "StageOutcome", "Verdict", "Artifact",
    # errors
    "LifecycleError", "ConfigError", "GateFailed", "BundleError",
]

# Every module of the package imports the errors above from here, so this module cannot import the API
# (config, pipeline, the stages...) when it is imported: that would be a cycle, and `import lifecycle.edge`
# on a device, or `lifecycle --help`, would load pydantic. The API's names resolve on first use instead
# (PEP 562). pyproject.toml's import contracts ignore this one edge, lifecycle -> lifecycle.api.
if TYPE_CHECKING:
    from lifecycle.api import (
        Adapt,
        Artifact,
        BundleError,
        Control,
        DataSource,
        Distill,
        Export,
        Finetune,
        Gate,
        LoRA,
        ModelSource,
        Pipeline,
        Predictor,
        Pretrain,
        Quantize,
        Serve,
        Split,
        StageOutcome,
        Student,
        Task,
        TokenizerSpec,
        TrainConfig,
        Verdict,
        gate,
        load_run,
        promote,
        run,
    )


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'lifecycle' has no attribute '{name}'")
    from lifecycle import api

    value = globals()[name] = getattr(api, name)  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
