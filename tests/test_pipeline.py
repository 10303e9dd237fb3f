"""The frame end to end on a real (tiny) run: real Trainer, real ONNX export, real onnxruntime."""

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle.cli import main

FINETUNE_FILES = {"config.json", "manifest.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                  "tokenizer_config.json", "predictions"}  # predictions/test.jsonl: per-example, for release gates
EXPORT_FILES = {"config.json", "labels.json", "manifest.json", "model.onnx", "schema.json", "special_tokens_map.json",
                "tokenizer.json", "tokenizer_config.json", "predictions"}


def write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One completed two-stage run, with its report plots; tests get a private copy of it."""
    root = tmp_path_factory.mktemp("finished")
    pipe = write(root / "tiny.yaml", tiny_pipeline())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFECYCLE_PLOTS", "1")
        assert main(["run", str(pipe), "--workdir", str(root / "runs")]) == 0
    assert "![stages.png](plots/stages.png)" in (root / "runs" / "tiny" / "report.md").read_text()
    return root


@pytest.fixture
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    # the copy's resolved pipeline points at the same data; only the run dir moves
    return tmp_path / "tiny.yaml", tmp_path / "runs", tmp_path / "runs" / "tiny"


def test_run_writes_artifacts_reports_and_plots(run):
    _, _, run_dir = run
    assert {p.name for p in (run_dir / "finetune").iterdir()} == FINETUNE_FILES
    assert {p.name for p in (run_dir / "export").iterdir()} == EXPORT_FILES
    for name in ("report.json", "report.md", "junit.xml", "pipeline.json", "plots/loss.png", "plots/stages.png"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["pipeline"] == "tiny" and report["passed"] is True
    ft, ex = report["stages"]
    assert (ft["name"], ft["kind"], ft["status"]) == ("finetune", "finetune", "passed")
    assert set(ft["gates"][0]) >= {"metric", "bound", "value", "reference", "passed"}
    # at parity the graph answers as the PyTorch model did: the same test accuracy, to one text in 60
    assert ex["metrics"]["parity_max_abs_diff"] < 1e-4
    assert ex["metrics"]["accuracy"] == pytest.approx(ft["metrics"]["accuracy"], abs=1 / 60 + 1e-9)
    assert ex["gates"][0]["reference"] == ft["metrics"]["accuracy"]
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["parent"]["cache_key"] == json.loads((run_dir / "finetune" / "manifest.json").read_text())["cache_key"]
    assert {"cpu", "threads", "libraries", "python"} <= set(manifest["environment"])
    assert manifest["environment"]["libraries"]["onnxruntime"]
    # what each artifact holds, beside the family every artifact reader checks
    finetune = json.loads((run_dir / "finetune" / "manifest.json").read_text())
    assert (finetune["kind"], finetune["holds"]) == ("hf-model", "classifier")
    assert (manifest["kind"], manifest["holds"]) == ("onnx-model", "onnx-classifier")
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    # accuracy + the default collapse gate (warn) on finetune, accuracy + parity on export
    assert suite.get("tests") == "3" and suite.get("failures") == "0"


def test_rerun_skips_every_stage(run, capsys):
    pipe, workdir, run_dir = run
    weights = (run_dir / "finetune" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert out.count(": cached, artifact verified") == 2
    assert (run_dir / "finetune" / "model.safetensors").stat().st_mtime_ns == weights
    assert json.loads((run_dir / "report.json").read_text())["stages"][0]["status"] == "cached"


def test_changing_a_stage_reruns_it_and_later_stages_only(run, capsys):
    pipe, workdir, run_dir = run
    raw = tiny_pipeline()
    raw["stages"][1]["opset"] = 18
    write(pipe, raw)
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "stage finetune (finetune): cached" in out and "== stage export (export)\n" in out
    assert json.loads((run_dir / "export" / "manifest.json").read_text())["config"]["opset"] == 18


def test_corrupt_artifact_is_refused_and_rebuilt(run, capsys):
    pipe, workdir, run_dir = run
    (run_dir / "export" / "labels.json").write_text('["x"]')
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "refusing artifact" in out and "export/labels.json: changed" in out
    assert "stage finetune (finetune): cached" in out
    assert json.loads((run_dir / "export" / "labels.json").read_text()) != ["x"]


def test_impossible_gate_exits_3_with_junit_failure(run, capsys):
    pipe, workdir, run_dir = run
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "accuracy", "min": 1.01}]  # gates are not in the cache key
    write(pipe, raw)
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 3
    assert "accuracy >= 1.01" in capsys.readouterr().err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is False
    assert [s["status"] for s in report["stages"]] == ["failed", "skipped"]
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    failure = suite.find("testcase/failure")
    assert suite.get("failures") == "1" and "accuracy" in failure.get("message")
    assert "value=" in failure.text and "bound" in failure.text


def test_warn_gate_does_not_stop(run):
    pipe, workdir, run_dir = run
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "accuracy", "min": 1.01, "on_fail": "warn"}]
    write(pipe, raw)
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] and report["stages"][0]["gates"][0]["passed"] is False


def test_gate_command_rechecks_a_finished_run(run, tmp_path):
    _, _, run_dir = run
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    assert main(["gate", str(run_dir), "--junit", str(junit)]) == 0
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
    # tighten a gate in the recorded config: the same artifacts now fail release gating
    resolved = json.loads((run_dir / "pipeline.json").read_text())
    resolved["pipeline"]["stages"][1]["gates"][0] = {"metric": "ort_latency_p50_ms", "max": 0.0}
    (run_dir / "pipeline.json").write_text(json.dumps(resolved))
    assert main(["gate", str(run_dir), "--junit", str(junit)]) == 3
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"


def test_gate_refuses_a_tampered_run(run, capsys):
    _, _, run_dir = run
    (run_dir / "export" / "model.onnx").write_bytes(b"not a model")
    assert main(["gate", str(run_dir)]) == 3  # a failed gate naming the file, never a pass
    assert "export/model.onnx: changed" in capsys.readouterr().out


def test_report_command_rebuilds_reports(run, plots):
    _, _, run_dir = run
    for name in ("report.md", "junit.xml", "plots/stages.png"):
        (run_dir / name).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text().startswith("# Pipeline `tiny`: PASSED")
    assert (run_dir / "plots" / "stages.png").is_file() and (run_dir / "junit.xml").is_file()
    # stage times come from the manifests, as the run recorded them
    stages = json.loads((run_dir / "report.json").read_text())["stages"]
    recorded = {s["name"]: json.loads((run_dir / s["name"] / "manifest.json").read_text())["timings"]["seconds"]
                for s in stages}
    assert all(s["seconds"] == round(recorded[s["name"]], 2) > 0 for s in stages)


def test_reports_without_plots_drop_the_old_ones(run, monkeypatch):
    """LIFECYCLE_PLOTS=0: report.md no longer shows the plots of an earlier report, which are removed."""
    _, _, run_dir = run
    monkeypatch.setenv("LIFECYCLE_PLOTS", "0")
    assert (run_dir / "plots" / "stages.png").is_file()  # the copied run's, drawn when it ran
    assert main(["report", str(run_dir)]) == 0
    assert not (run_dir / "plots").exists() and "plots/" not in (run_dir / "report.md").read_text()


def test_from_forces_a_rebuild(run, capsys):
    pipe, workdir, run_dir = run
    assert main(["run", str(pipe), "--workdir", str(workdir), "--from", "export"]) == 0
    out = capsys.readouterr().out
    assert "stage finetune (finetune): cached" in out and "== stage export (export)\n" in out
    assert main(["run", str(pipe), "--workdir", str(workdir), "--from", "nope"]) == 2


def test_crashed_stage_leaves_no_artifact(run, monkeypatch):
    """A stage that dies midway leaves only its .tmp directory, which the next run discards."""
    pipe, workdir, run_dir = run
    from lifecycle.stages import export

    shutil.rmtree(run_dir / "export")

    def boom(*a, **k):
        (run_dir / "export.tmp" / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(export, "run", boom)
    with pytest.raises(RuntimeError):
        main(["run", str(pipe), "--workdir", str(workdir)])
    assert not (run_dir / "export").exists() and (run_dir / "export.tmp").exists()
    monkeypatch.undo()
    assert main(["run", str(pipe), "--workdir", str(workdir)]) == 0
    assert not (run_dir / "export.tmp").exists() and (run_dir / "export" / "manifest.json").is_file()
