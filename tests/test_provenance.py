"""A result names the exact tree it measured (issue 39): commit, dirty flag, hashes of its scripts and of
the package sources; a result older than a change to any of them is stale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from record import ELSEWHERE, stale, stored  # noqa: E402


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A committed copy of the package, its pipelines and benchmarks/common.py, with a tiny benchmark."""
    root = tmp_path / "repo"
    for folder in ("lifecycle", "serving", "pipelines"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy2(ROOT / ".gitignore", root)  # __pycache__ is not a change
    shutil.copy2(ROOT / "benchmarks" / "common.py", root / "benchmarks")
    (root / "benchmarks" / "tiny.py").write_text(
        "from common import Recorder\nr = Recorder('tiny', quick=True)\n"
        "checks = [{'name': 'one', 'value': 1.0, 'target': '>= 1', 'passed': True}]\n"
        "raise SystemExit(r.report(checks, r.save({'figure': 1.0}, checks)))\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "tree")
    return root


def _record(root: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_BENCH")}
    return subprocess.run([sys.executable, "benchmarks/tiny.py"], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**clean, "LIFECYCLE_BENCH_ALLOW_BUSY": "1", **env})


def test_a_result_names_its_commit_clean_tree_and_hashes_and_goes_stale_when_its_code_changes(tree):
    done = _record(tree)
    assert done.returncode in (0, 1), done.stderr  # 1: the quiet-machine check (other jobs share these cores)
    env = json.loads((tree / "benchmarks" / "results" / "tiny.json").read_text())["environment"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    assert env["git_commit"] == head and env["dirty"] is False  # its own result file does not make the tree dirty
    assert set(env["files"]) == {"benchmarks/tiny.py", "benchmarks/common.py"}
    assert "lifecycle/stages/quantize/__init__.py" in env["sources"] and "serving/service.py" in env["sources"]
    assert len(env["sources_sha256"]) == 64


def test_recording_on_a_dirty_tree_is_refused_unless_marked(tree):
    (tree / "lifecycle" / "stages" / "quantize.py").write_text("# an edit not committed\n", encoding="utf-8")
    done = _record(tree)
    assert done.returncode != 0 and "refused: the tree has changes that are not committed" in done.stderr
    assert not (tree / "benchmarks" / "results" / "tiny.json").exists()
    done = _record(tree, LIFECYCLE_BENCH_ALLOW_DIRTY="1")
    assert done.returncode in (0, 1), done.stderr
    assert json.loads((tree / "benchmarks" / "results" / "tiny.json").read_text())["environment"]["dirty"] is True


def test_a_stored_result_is_stale_after_a_change_to_its_script_or_the_sources(tmp_path):
    common = ROOT / "benchmarks" / "common.py"
    result = {"environment": {**environment.provenance([common]), "dirty": False}}  # as on a clean commit
    assert stale(result) == []
    result["environment"]["files"]["benchmarks/common.py"] = "0" * 64
    result["environment"]["sources"]["lifecycle/stages/quantize.py"] = "0" * 64
    result["environment"]["sources_sha256"] = "0" * 64
    assert stale(result) == ["benchmarks/common.py changed", "1 source files changed (lifecycle/stages/quantize.py)"]
    assert stale({"environment": {"git_commit": "abc"}}) == [
        "recorded without hashes of its scripts and sources (before provenance was recorded)"]


@pytest.mark.evidence
def test_no_stored_result_is_stale():
    """Red until every result is re-recorded on one clean commit (`make record`): not in `make test`."""
    found = {name: why for name, result in stored().items() if name not in ELSEWHERE and (why := stale(result))}
    assert not found, "stale results (re-record with `make record`):\n" + "\n".join(
        f"  {name}: {'; '.join(why)}" for name, why in found.items())
