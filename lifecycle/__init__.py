"""lifecycle: one gated pipeline from pre-training to a served model."""

import os

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
