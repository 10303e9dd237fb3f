"""The README's first command, end to end (slow: about 10 minutes on 2 CPU cores)."""

import json

import pytest
from conftest import ROOT

from lifecycle.cli import main


@pytest.mark.slow
def test_quickstart_runs_with_every_gate_passing(tmp_path):
    assert main(["run", str(ROOT / "pipelines" / "quickstart.yaml"), "--workdir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "quickstart" / "report.json").read_text())
    assert report["passed"] and [s["kind"] for s in report["stages"]] == [
        "pretrain", "adapt", "finetune", "distill", "export", "quantize", "serve"]
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["quantize"]["metrics"]["accuracy"] >= 0.90
    assert "baseline_tfidf_accuracy" in stages["finetune"]["metrics"]
    assert "pretraining_gain" in stages["finetune"]["metrics"]
