"""Can the models a gate judges actually be loaded?

An artifact's manifest proves its files are the ones the stage wrote, not that they load: a model
written corrupt (a crash mid-export, a bad quantizer output, a hand-edited file re-hashed into the
manifest) would pass `lifecycle gate` on its recorded metrics. `load_problem` opens each model the
way its consumer will: an onnx-model in an onnxruntime session (what lifecycle.edge and the server
run; `onnx.checker` validates against the ONNX spec alone and knows nothing of the com.microsoft
fused operators our optimised graphs hold), after lifecycle.edge's external-data path check; an hf-model's safetensors headers (every
tensor named, no pickle). `lifecycle.verdict.load_run` calls it for every artifact it judges: a problem is a failed gate.
"""

from __future__ import annotations

from pathlib import Path


def onnx_load_problem(path: str | Path) -> str | None:
    """None when onnxruntime opens `path` (model.onnx), else why not, in one line."""
    import onnxruntime as ort

    from lifecycle.edge import BundleError, check_external_data

    path = Path(path)
    if not path.is_file():
        return f"{path}: missing"
    try:
        check_external_data(path)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except BundleError as exc:  # unparseable, or external data pointing outside the artifact
        return f"{path}: cannot be loaded ({exc})"
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{path}: cannot be loaded by onnxruntime ({first[:300]})"
    return None


def safetensors_load_problem(model_dir: str | Path) -> str | None:
    """None when every *.safetensors file of `model_dir` has a readable header, else why not."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return f"{model_dir}: no safetensors weights"
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as fh:
                list(fh.keys())
        except Exception as exc:  # safetensors raises SafetensorError / OSError on a bad header
            return f"{f}: cannot be read as safetensors ({str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__})"
    return None


def load_problem(artifact) -> str | None:
    """For an Artifact: its model's load problem, or None (also for kinds that hold no model)."""
    if artifact.kind == "onnx-model":
        return onnx_load_problem(Path(artifact.path) / "model.onnx")
    if artifact.kind == "hf-model":
        return safetensors_load_problem(artifact.path)
    return None

