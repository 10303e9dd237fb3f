"""A verdict bound to the exact artifacts: `lifecycle gate` judges each artifact against the config the
run directory records (cache key, parent chain, file hashes) and never blesses a stale or foreign one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()))
    assert main(["run", str(root / "tiny.yaml"), "--workdir", str(root / "runs")]) == 0
    return root


@pytest.fixture
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path / "tiny.yaml", tmp_path / "runs", tmp_path / "runs" / "tiny"


def record(run_dir) -> dict:
    return json.loads((run_dir / "pipeline.json").read_text())


def test_a_finished_run_records_it_and_passes_the_gate(run, capsys):
    _, _, run_dir = run
    assert record(run_dir)["state"] == "finished" and record(run_dir)["passed"] is True
    assert main(["gate", str(run_dir)]) == 0
    assert "gates passed" in capsys.readouterr().out


def test_changed_config_and_a_killed_rerun_fail_the_gate_naming_the_stale_stage(run, capsys):
    """The README's CI recipe ran `lifecycle run ... || true; lifecycle gate`: a re-run that dies must not
    leave the previous run's models to be gated against the new config."""
    pipe, workdir, run_dir = run
    raw = tiny_pipeline()
    raw["stages"][0]["train"]["lr"] = 1e-3  # a new finetune config: both stages must be rebuilt
    pipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "run", str(pipe), "--workdir", str(workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and record(run_dir)["pipeline"]["stages"][0]["train"]["lr"] != 1e-3:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # dies while finetune trains: the old artifacts stay on disk
    proc.wait(timeout=30)
    assert record(run_dir)["state"] == "running"  # nobody recorded an end: the run did not finish
    capsys.readouterr()
    assert main(["gate", str(run_dir)]) == 3
    out = capsys.readouterr().out
    assert "stage 'finetune' is stale" in out and "stage 'export' is stale" in out
    assert "did not finish" in out
    report = json.loads((run_dir / "report.json").read_text())
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) >= 3 and "did not finish" in ET.tostring(suite, encoding="unicode")
    assert report["passed"] is True  # report.json is the last run's own; gate wrote junit only


def test_changed_data_makes_every_stage_stale(run, capsys, tmp_path):
    _, _, run_dir = run
    rec = record(run_dir)
    data = tmp_path / "news.jsonl"
    rows = open(rec["pipeline"]["data"]["news"]["path"]).read().splitlines()
    data.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer than the run was trained on
    rec["pipeline"]["data"]["news"]["path"] = str(data)
    (run_dir / "pipeline.json").write_text(json.dumps(rec))
    assert main(["gate", str(run_dir)]) == 3
    assert "stage 'finetune' is stale" in capsys.readouterr().out


def test_a_refused_parent_fails_its_children(run, capsys):
    _, _, run_dir = run
    (run_dir / "finetune" / "config.json").write_text("{}")
    assert main(["gate", str(run_dir)]) == 3
    out = capsys.readouterr().out
    assert "finetune/config.json: changed" in out and "parent artifact 'finetune' is missing or refused" in out


def test_an_artifact_built_from_other_parent_bytes_is_foreign(run, capsys):
    _, _, run_dir = run
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    manifest["parent"]["digest"] = "0" * 64  # as if export had been copied in from another run of the same config
    (run_dir / "export" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["gate", str(run_dir)]) == 3
    assert "belongs to another run" in capsys.readouterr().out


def test_a_missing_data_file_leaves_the_previous_record_untouched(run, capsys):
    pipe, workdir, run_dir = run
    before = (run_dir / "pipeline.json").read_text()
    raw = tiny_pipeline()
    raw["data"]["news"]["path"] = str(pipe.parent / "nope.jsonl")
    pipe.write_text(yaml.safe_dump(raw))
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 1
    assert "nope.jsonl" in capsys.readouterr().err
    assert (run_dir / "pipeline.json").read_text() == before
    assert main(["gate", str(run_dir)]) == 0


def test_a_model_that_cannot_load_fails_the_gate_even_when_rehashed(run, capsys):
    """Hashes prove the bytes are the ones recorded, not that they are a model: gate opens each one."""
    from lifecycle.artifact import sha256_file

    _, _, run_dir = run
    model = run_dir / "export" / "model.onnx"
    model.write_bytes(b"\x08\x07not an onnx graph")
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(model)
    (run_dir / "export" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["gate", str(run_dir)]) == 3
    assert "cannot be loaded" in capsys.readouterr().out
