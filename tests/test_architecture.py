"""The import rules of pyproject.toml's [tool.importlinter]: layers (cli > pipeline > config > stages > tasks >
components > schema/artifact), stages independent of each other, no import cycles, and an edge
runtime that needs onnxruntime, tokenizers and numpy only and nothing of lifecycle outside lifecycle.edge
(an allow-list: a module added to lifecycle later is forbidden too). Checked by running import-linter itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts (the pyproject.toml in `cwd`), without a cache, so the
    graph is the code as it is now; `pythonpath` first on the path decides which `lifecycle` is read."""
    assert LINT_IMPORTS.is_file(), f"no {LINT_IMPORTS}: install the dev extra (pip install -e '.[dev]': import-linter)"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "0 broken" in out.stdout
    for name in ("Layers:", "Stages are plug-ins", "No import cycles", "The edge runtime needs",
                 "The edge runtime does not import the lifecycle package"):
        assert name in out.stdout, out.stdout  # every contract ran


def _copy_of_the_package(tmp_path: Path) -> Path:
    """lifecycle's sources (no caches) plus the project's pyproject.toml, under tmp_path."""
    shutil.copytree(ROOT / "lifecycle", tmp_path / "lifecycle", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_late_import(module: Path, statement: str, name: str) -> None:
    """Append a function to `module` that imports inside its body (a late import counts as a dependency)."""
    module.write_text(module.read_text() + f"\n\ndef _late():\n    {statement}\n\n    return {name}\n")


def test_a_stage_importing_another_stage_breaks_the_contracts(tmp_path):
    """The same contracts on a copy of the package where distill borrows from finetune (what the code
    did before the shared pieces moved to lifecycle.components): lint-imports fails and names it."""
    copy = _copy_of_the_package(tmp_path)
    _add_late_import(copy / "lifecycle" / "stages" / "distill.py", "from lifecycle.stages.finetune import with_lora",
                     "with_lora")
    out = lint_imports(copy, pythonpath=copy)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "Stages are plug-ins: no stage imports another BROKEN" in out.stdout, out.stdout[-3000:]
    assert "lifecycle.stages.distill -> lifecycle.stages.finetune" in out.stdout, out.stdout[-3000:]


def test_a_component_importing_a_stage_breaks_the_layers(tmp_path):
    copy = _copy_of_the_package(tmp_path)
    _add_late_import(copy / "lifecycle" / "components" / "onnx.py", "from lifecycle.stages import quantize", "quantize")
    out = lint_imports(copy, pythonpath=copy)
    assert out.returncode == 1, out.stdout[-3000:]
    reported = " ".join(out.stdout.split())  # import-linter wraps a long contract name
    assert "Layers: cli > api > pipeline > config > stages > workloads > tasks > components > schema/artifact BROKEN" in reported


def test_edge_importing_any_other_part_of_lifecycle_breaks_the_contracts(tmp_path):
    """The edge contract is an allow-list: a lifecycle module that does not exist yet (here a new
    lifecycle/audio_features.py) is forbidden to edge as much as the stages are, and so is the lifecycle
    package itself (its LifecycleError, say), while edge's own modules import each other freely."""
    copy = _copy_of_the_package(tmp_path)
    (copy / "lifecycle" / "audio_features.py").write_text("def log_mel():\n    return None\n")
    _add_late_import(copy / "lifecycle" / "edge" / "predictor.py", "from lifecycle.audio_features import log_mel",
                     "log_mel")
    _add_late_import(copy / "lifecycle" / "edge" / "bundle.py", "from lifecycle import LifecycleError", "LifecycleError")
    out = lint_imports(copy, pythonpath=copy)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "The edge runtime needs onnxruntime, tokenizers and numpy only BROKEN" in out.stdout, out.stdout[-3000:]
    assert "lifecycle.edge.predictor -> lifecycle.audio_features" in out.stdout, out.stdout[-3000:]
    assert "The edge runtime does not import the lifecycle package itself BROKEN" in out.stdout, out.stdout[-3000:]
    assert "lifecycle.edge.bundle -> lifecycle" in out.stdout, out.stdout[-3000:]
    assert "Stages are plug-ins: no stage imports another KEPT" in out.stdout  # only the edge contracts broke


def test_results_travel_in_return_values_not_side_channels():
    """A stage returns (metrics, details) and a component returns what it measured: nothing under lifecycle/
    writes manifest content into the stage context (`ctx.details`, `extra_metrics`) or passes state through
    the process environment. The only environment writes are defaults for other libraries, set once and
    never overriding the user's: telemetry off (BentoML, onnxruntime), cuBLAS's deterministic workspace
    and MLflow's artifact download bars off."""
    import re

    library_defaults = {"BENTOML_DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY", "CUBLAS_WORKSPACE_CONFIG",
                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    side_channel = re.compile(r"ctx\.details|extra_metrics|os\.environ\[[^\]]*\]\s*(=[^=]|\+=|\|=)|del os\.environ"
                              r"|os\.environ\.(pop|popitem|update|clear|__setitem__|__delitem__)\(|os\.(putenv|unsetenv)\(")
    setdefault = re.compile(r"os\.environ\.setdefault\(\s*[\"']([A-Z0-9_]+)[\"']")
    found = []
    for path in sorted((ROOT / "lifecycle").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            default = setdefault.search(line)
            if side_channel.search(line) or (default and default.group(1) not in library_defaults):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
