"""`import lifecycle as lc`: the public names, each documented; an import that stays cheap; the quickstart
script written with nothing else; and lc.run / load_run / gate / promote giving what the CLI gives, on the
tiny ONNX run the export tests share (cached when they ran first)."""

from __future__ import annotations

import ast
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from test_export import NAME, run_tiny, shared_workdir, tiny_pipeline

import lifecycle as lc
from lifecycle.cli import main

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [
    "run", "load_run", "gate", "promote", "Predictor",
    "Pipeline", "Pretrain", "Adapt", "Finetune", "Distill", "Export", "Quantize", "Serve",
    "DataSource", "Split", "Task", "Gate", "ModelSource", "TokenizerSpec", "TrainConfig", "LoRA", "Control", "Student",
    "StageOutcome", "Verdict", "Artifact",
    "LifecycleError", "ConfigError", "GateFailed", "BundleError",
]
HEAVY = ("torch", "transformers", "onnxruntime", "datasets", "evaluate", "bentoml", "mlflow", "peft", "optimum")


def test_the_public_names_are_the_stated_ones_and_each_is_documented():
    assert lc.__all__ == PUBLIC
    for name in PUBLIC:
        obj = getattr(lc, name)
        assert (obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__), f"lc.{name} has no docstring"
    assert {n for n in dir(lc) if not n.startswith("_")} >= set(PUBLIC)
    with pytest.raises(AttributeError, match="no attribute 'pipeline_runner'"):
        lc.pipeline_runner  # noqa: B018
    # a stage config names its kind itself; YAML still has to
    assert [s.kind for s in (lc.Pretrain(data="d"), lc.Export(), lc.Serve())] == ["pretrain", "export", "serve"]


def test_import_lifecycle_is_cheap_and_the_api_stays_light():
    """`import lifecycle` loads no other lifecycle module and no pydantic (the edge runtime imports the
    package on a device); resolving the API loads configs, never torch, transformers or onnxruntime."""
    script = ("import json, sys; import lifecycle; first = sorted(sys.modules); lifecycle.Pipeline, lifecycle.run, "
              "lifecycle.Predictor; print(json.dumps([first, sorted(sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    first, after = json.loads(out.stdout)
    assert [m for m in first if m.startswith("lifecycle")] == ["lifecycle"]
    assert "pydantic" not in first
    assert not [m for m in after if m.split(".")[0] in HEAVY], [m for m in after if m.split(".")[0] in HEAVY][:5]


def test_the_quickstart_script_uses_only_import_lifecycle_as_lc():
    path = ROOT / "pipelines" / "quickstart.py"
    imports = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))]
    lifecycle_imports = [ast.unparse(n) for n in imports
                         if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lifecycle")
                         or isinstance(n, ast.Import) and any(a.name.startswith("lifecycle") for a in n.names)]
    assert lifecycle_imports == ["import lifecycle as lc"]
    script = runpy.run_path(str(path), run_name="pipeline_definition")  # builds (validates) it; the run is `slow`
    assert isinstance(script["pipeline"], lc.Pipeline)
    assert [s.kind for s in script["pipeline"].stages] == [
        "pretrain", "adapt", "finetune", "distill", "export", "quantize", "serve"]


def test_run_load_run_gate_and_promote_give_what_the_cli_gives(tmp_path_factory, tmp_path, capsys):
    workdir = shared_workdir(tmp_path_factory)
    run_dir = run_tiny(workdir)  # trains once per session; cached here when test_export ran first
    said = []
    outcomes = lc.run(tiny_pipeline(), workdir=workdir, echo=said.append)
    assert [(o.name, o.status) for o in outcomes] == [("finetune", "cached"), ("export", "cached")]
    assert isinstance(outcomes[-1], lc.StageOutcome) and isinstance(outcomes[-1].artifact, lc.Artifact)
    assert any("report:" in line for line in said)

    loaded = lc.load_run(run_dir)
    assert isinstance(loaded, lc.Verdict) and loaded.passed and loaded.pipeline.name == NAME
    assert [o.status for o in loaded.outcomes] == ["passed", "passed"]
    assert lc.gate(run_dir).passed
    assert main(["gate", str(run_dir), "--junit", str(tmp_path / "junit.xml")]) == 0

    registry = tmp_path / "registry"
    entry = lc.promote(run_dir, "production", registry=registry)
    assert entry.version == "v1" and entry.meta["stage"] == "export"
    verdict = lc.gate(run_dir, against="production", registry=registry)
    assert verdict.passed and verdict.outcomes[-1].name == "export vs release:production"
    assert main(["gate", str(run_dir), "--against", "production", "--registry", str(registry),
                 "--junit", str(tmp_path / "junit.xml")]) == 0
    capsys.readouterr()

    lc.Predictor.open(run_dir / "export").predict(["a short text to classify"])


def test_api_errors_are_the_library_errors(tmp_path):
    with pytest.raises(lc.ConfigError, match="overrides: they apply to a pipeline file"):
        lc.run(tiny_pipeline(), workdir=tmp_path, overrides=["seed=1"])
    with pytest.raises(lc.ConfigError, match=r"stages\[0\]\.train\.lr"):
        lc.run(ROOT / "tests" / "pipelines" / "tiny.yaml", workdir=tmp_path, overrides=["stages.finetune.train.lr=-1"])
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    with pytest.raises(lc.LifecycleError, match="not a run directory"):
        lc.load_run(tmp_path)
