"""pipelines/smoke.yaml: every stage kind, end to end, as CI and anyone checking an install run it."""

import json

from conftest import ROOT

from lifecycle.cli import main
from lifecycle.stages import KINDS


def test_smoke_pipeline_runs_every_stage_kind_and_passes(tmp_path):
    assert main(["run", str(ROOT / "pipelines" / "smoke.yaml"), "--workdir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "smoke" / "report.json").read_text())
    assert report["passed"]
    assert {s["kind"] for s in report["stages"]} == set(KINDS), "smoke.yaml must cover every stage kind"
    for stage in report["stages"]:
        assert stage["status"] == "passed" and stage["gates"], stage["name"]
        assert all(g["passed"] for g in stage["gates"])
    serve = report["stages"][-1]["metrics"]
    assert serve["error_count"] == 0 and serve["accuracy"] == report["stages"][-2]["metrics"]["accuracy"]
