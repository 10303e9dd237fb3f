"""The edge runtime's import graph, cheaply (the slow test in test_edge.py builds a fresh virtualenv):
a new interpreter imports lifecycle.edge, opens an exported model and predicts, and then holds no
module beyond the standard library, numpy, onnxruntime, tokenizers and lifecycle.edge itself."""

from __future__ import annotations

import json
import subprocess
import sys

from test_export import run_tiny, shared_workdir

ALLOWED = {"numpy", "onnxruntime", "tokenizers"}  # what the edge bundle's README asks a device to install

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


def test_importing_the_edge_runtime_pulls_in_nothing_heavy():
    got = imported_by_edge()
    assert set(got["third_party"]) <= ALLOWED | {"lifecycle"}, got
    assert got["lifecycle"] == ["lifecycle", "lifecycle.edge"]


def test_predicting_with_the_edge_runtime_pulls_in_nothing_heavy(tmp_path_factory):
    """The late imports inside Predictor (onnxruntime, tokenizers) count too: open and predict."""
    export = run_tiny(shared_workdir(tmp_path_factory)) / "export"  # cached when test_export ran first
    got = imported_by_edge(str(export))
    assert set(got["third_party"]) == ALLOWED | {"lifecycle"}, got  # onnxruntime and tokenizers did load
    assert got["lifecycle"] == ["lifecycle", "lifecycle.edge"]
