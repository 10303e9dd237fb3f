"""Every benchmark still runs against today's code, in seconds (issue 39): a benchmark that nothing runs
rots (embedding.py called `lifecycle.stages.quantize.build` long after the stage was reshaped).

Three forms, cheapest first, none of them storing a result:
- every name a benchmark takes from lifecycle or from another benchmark (imports inside functions and
  attributes of imported modules included) exists: what broke embedding.py, checked without running it;
- every benchmark's command line parses (`--help`, in this process: its module-level imports run);
- the benchmarks whose own path fits in seconds run it end to end with `--smoke` (benchmarks/common.py:
  smallest sizes, result into a temporary folder, benchmarks/results untouched).
The others train or serve a real model for minutes even at their smallest; benchmarks/record.py runs them.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
from conftest import needs_shared_data  # noqa: E402
from record import BENCHMARKS, ELSEWHERE  # noqa: E402

SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("common", "record"))
NO_ARGPARSE = {"reliability"}  # no options: its command line runs the hardening tests (minutes)
# `--smoke` end to end, at its smallest: about 10 s each on 2 busy cores; the slower ones under `-m slow`
# (spinning and latency_gate train two classifiers first, ~40 s each); result name, command
SMOKE_RUNS = [
    pytest.param("image", ["image.py"], id="image"),
    pytest.param("generation", ["generation.py"], marks=needs_shared_data("brown"), id="generation"),
    pytest.param("masked_image", ["masked_image.py"], id="masked_image"),
    pytest.param("pretrain_overhead", ["pretrain_overhead.py"], id="pretrain_overhead"),
    pytest.param("audio_latency", ["audio.py", "latency"], marks=needs_shared_data("speech", "fsdd"), id="audio_latency"),
    pytest.param("spinning", ["spinning.py"], marks=pytest.mark.slow, id="spinning"),
    pytest.param("latency_gate", ["latency_gate.py"], marks=pytest.mark.slow, id="latency_gate"),
    # MiniLM adapted 2 steps, exported, quantized per-channel and per-tensor: ~2 minutes
    pytest.param("embedding", ["embedding.py"], marks=[pytest.mark.slow, needs_shared_data("medical_abstracts")],
                 id="embedding"),
]


def test_every_benchmark_is_recorded_by_the_one_command():
    scripts = {BENCHMARKS[name][0].removesuffix(".py") for name in BENCHMARKS} | set(ELSEWHERE)
    assert scripts == set(SCRIPTS)


def _imported(tree: ast.AST) -> dict[str, list]:
    """What each name bound by `from X import Y [as Z]` (X in lifecycle or benchmarks) is, per binding;
    asserts every imported name exists."""
    bound: dict[str, list] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module.split(".")[0] == "lifecycle" or (BENCH / f"{node.module}.py").is_file()):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):  # a submodule its package does not import
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ModuleNotFoundError:
                        pass
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name} (line {node.lineno})"
                bound.setdefault(alias.asname or alias.name, []).append(getattr(module, alias.name))
    return bound


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_name_a_benchmark_uses_exists(name):
    tree = ast.parse((BENCH / f"{name}.py").read_text())
    bound = _imported(tree)
    for node in ast.walk(tree):  # `quantize_stage.build(...)`: an attribute of an imported module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            objs = bound[node.value.id]
            if all(o is objs[0] for o in objs) and isinstance(objs[0], types.ModuleType):
                assert hasattr(objs[0], node.attr), f"benchmarks/{name}.py:{node.lineno}: {objs[0].__name__} has no {node.attr}"


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - NO_ARGPARSE))
def test_every_benchmark_command_line_parses(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"{name}.py"), "--help"])
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
    if threads:
        sys.modules["torch"].set_num_threads(threads)
    assert exit.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "command"), SMOKE_RUNS)
def test_a_benchmark_runs_end_to_end_in_its_smoke_form(name, command):
    before = {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_BENCH")}  # --smoke picks the folder
    script, *args = command
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--smoke"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a check missed (a smoke run measures nothing)
    path = Path(next(line for line in done.stdout.splitlines() if line.startswith("wrote "))[len("wrote "):])
    try:
        assert path.parent != BENCH / "results" and path.name == f"{name}.json"
        result = json.loads(path.read_text())
        assert result["smoke"] is True and result["checks"]
        assert result["environment"]["files"][f"benchmarks/{script}"]
    finally:
        shutil.rmtree(path.parent)
    assert {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()} == before


def test_distill_checks_against_the_teacher_are_vacuous_unless_it_beats_its_baselines():
    """distill.json's teacher once scored 0.538 and its LoRA gap (-12.7 points) and retention (1.14) passed."""
    import distill

    def verdicts(teacher: float, retention: float, teacher_val: float = 0.7) -> dict:
        r = {"models": {"teacher": {"f1_micro": teacher, "val_f1_micro": teacher_val},
                        "lora": {"f1_micro": 0.665, "trainable_fraction": 0.01}},
             "student": {"retention": retention, "speedup": 1.97},
             "baselines": {"majority_class": {"f1_micro": 0.363, "val_f1_micro": 0.367},
                           "tfidf_logreg": {"f1_micro": 0.56, "val_f1_micro": 0.63}}}
        return {c["name"].split(" (")[0]: c["status"] for c in distill.checks(r)}

    collapsed = verdicts(0.538, 1.14)
    assert collapsed["teacher - TF-IDF + logistic regression baseline, test micro-F1"] == "fail"
    assert collapsed["full fine-tuning - LoRA test micro-F1"] == collapsed["student retention"] == "vacuous"
    trained = verdicts(0.68, 0.98)
    assert trained["full fine-tuning - LoRA test micro-F1"] == trained["student retention"] == "pass"
    assert verdicts(0.68, 1.14)["student retention"] == "vacuous"  # a student far above its teacher
    lucky = verdicts(0.579, 0.98, teacher_val=0.59)  # above TF-IDF on test, under it on validation
    assert lucky["teacher - TF-IDF + logistic regression baseline, validation micro-F1"] == "fail"
    assert lucky["full fine-tuning - LoRA test micro-F1"] == lucky["student retention"] == "vacuous"
