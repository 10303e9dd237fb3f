"""The edge runtime's import graph, cheaply (the slow test in test_edge.py builds a fresh virtualenv):
a new interpreter imports lifecycle.edge, opens an exported model and predicts, and then holds no
module beyond the standard library, numpy, onnxruntime, tokenizers and lifecycle.edge's own modules; and the
edge/ folder copied alone (no other lifecycle module beside it) imports and predicts as `edge`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from test_export import run_tiny, shared_workdir

ALLOWED = {"numpy", "onnxruntime", "tokenizers"}  # what the edge bundle's README asks a device to install
EDGE = Path(__file__).resolve().parents[1] / "lifecycle" / "edge"

SCRIPT = """
import json, sys
from lifecycle.edge import Predictor
if len(sys.argv) > 1:
    p = Predictor.open(sys.argv[1])
    p.predict(["a short text to classify"])
    p.check()  # re-runs the pipeline's recorded predictions
third = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
               - {"__main__", "_distutils_hack"} - {m for m in sys.modules if m.startswith("__editable__")})
print(json.dumps({"third_party": third, "lifecycle": sorted(m for m in sys.modules if m.startswith("lifecycle"))}))
"""


def imported_by_edge(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def outside_edge(modules: list[str]) -> list[str]:
    """The lifecycle modules loaded besides the lifecycle package, lifecycle.edge and its modules."""
    return [m for m in modules if m not in ("lifecycle", "lifecycle.edge") and not m.startswith("lifecycle.edge.")]


def test_importing_the_edge_runtime_pulls_in_nothing_heavy():
    got = imported_by_edge()
    assert set(got["third_party"]) <= ALLOWED | {"lifecycle"}, got
    assert outside_edge(got["lifecycle"]) == [], got
    assert {"lifecycle.edge", "lifecycle.edge.predictor", "lifecycle.edge.bundle"} <= set(got["lifecycle"])


def test_predicting_with_the_edge_runtime_pulls_in_nothing_heavy(tmp_path_factory):
    """The late imports inside Predictor (onnxruntime, tokenizers) count too: open and predict."""
    export = run_tiny(shared_workdir(tmp_path_factory)) / "export"  # cached when test_export ran first
    got = imported_by_edge(str(export))
    assert set(got["third_party"]) == ALLOWED | {"lifecycle"}, got  # onnxruntime and tokenizers did load
    assert outside_edge(got["lifecycle"]) == [], got


def test_the_edge_folder_copied_alone_opens_a_bundle_and_predicts(tmp_path_factory, tmp_path):
    """What a device gets: lifecycle/edge/ copied on its own and imported as `edge` (its modules import each
    other relatively). It opens the export, predicts and re-checks the pipeline's recorded predictions,
    and no `lifecycle` module is loaded on the way (an absolute lifecycle import would load one)."""
    export = run_tiny(shared_workdir(tmp_path_factory)) / "export"
    shutil.copytree(EDGE, tmp_path / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import json, sys\n"
              "import edge\n"
              "p = edge.Predictor.open(sys.argv[1])\n"
              "answers = p.predict(['a short text to classify'])\n"
              "print(json.dumps({'file': edge.__file__, 'checked': p.check(), 'label': answers[0]['label'],\n"
              "                  'lifecycle': sorted(m for m in sys.modules if m.split('.')[0] == 'lifecycle')}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(export)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"] == str(tmp_path / "edge" / "__init__.py")
    assert got["lifecycle"] == [] and got["checked"] > 0
    assert got["label"] in json.loads((export / "labels.json").read_text())
