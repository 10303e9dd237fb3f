"""`lifecycle bundle`: which artifact a run directory resolves to, what the zip holds, determinism,
refusal of models that failed their gates, and external-data files travelling with the model."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import onnx
import pytest
from test_export import run_tiny, shared_workdir

from lifecycle import GateFailed, LifecycleError, cli, serving
from lifecycle.artifact import Artifact, commit
from lifecycle.bundle import onnx_artifact, write_bundle
from lifecycle.edge import Predictor

QUANTIZE = {"kind": "quantize", "latency": {"runs": 3, "warmup": 1}, "min_speedup": None}


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def quantized_run(onnx_workdir, tmp_path_factory):
    """A private copy of a finished finetune -> export -> quantize run (other tests rewrite the shared one)."""
    run = run_tiny(onnx_workdir, QUANTIZE)
    copy = tmp_path_factory.mktemp("bundle") / run.name
    shutil.copytree(run, copy)
    return copy


def test_run_dir_bundles_the_last_onnx_stage(quantized_run, tmp_path):
    out = write_bundle(quantized_run, tmp_path / "model.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["labels.json", "manifest.json", "model.onnx", "model_card.md", "schema.json",
                                         "tokenizer.json"]
        manifest = json.loads(zf.read("manifest.json"))
        assert set(manifest["files"]) == {"labels.json", "model.onnx", "model_card.md", "schema.json", "tokenizer.json"}
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
    art = Artifact.load(quantized_run / "quantize")
    assert manifest["source"]["stage"] == "quantize" and manifest["source"]["method"] == "dynamic-int8"
    assert manifest["source"]["digest"] == art.digest and manifest["metrics"] == art.metrics
    assert manifest["gates"] == art.manifest["gates"] and manifest["pipeline"] == "onnx-tiny"
    assert manifest["schema"]["max_length"] == 32 and set(manifest["schema"]["inputs"]) == {
        "input_ids", "attention_mask", "token_type_ids"}
    # opening verifies and reproduces the pipeline's predictions
    p = Predictor.open(out)
    assert p.check() == 8
    texts = [s["text"] for s in manifest["sample_predictions"]]
    labels = json.loads((art.path / "labels.json").read_text())
    assert [r["label"] for r in p.predict(texts)] == [labels[i] for i in art.manifest["details"]["test_predictions"][:8]]
    # deterministic: the same artifact gives the same bytes
    again = write_bundle(quantized_run / "quantize", tmp_path / "again.zip")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()
    assert onnx_artifact(quantized_run).path == onnx_artifact(quantized_run / "quantize").path
    assert serving.resolve(quantized_run).path == quantized_run / "quantize"  # `lifecycle serve` picks the same


def test_failed_gates_and_wrong_sources_are_refused(onnx_workdir, tmp_path):
    strict = {**QUANTIZE, "gates": [{"metric": "accuracy", "min": 1.01}]}
    with pytest.raises(GateFailed):
        run_tiny(onnx_workdir, strict)
    run = onnx_workdir / "onnx-tiny"
    with pytest.raises(LifecycleError, match="failed its gates"):
        write_bundle(run, tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()
    with pytest.raises(LifecycleError, match="hf-model artifact"):
        write_bundle(run / "finetune", tmp_path / "model.zip")
    with pytest.raises(LifecycleError, match="neither an artifact"):
        write_bundle(tmp_path, tmp_path / "model.zip")
    # a run without a finished onnx-model stage: `lifecycle bundle` and `lifecycle serve` say the same
    (tmp_path / "pipeline.json").write_text(json.dumps({"pipeline": {"stages": [{"kind": "finetune"}]}}))
    with pytest.raises(LifecycleError, match="no finished onnx-model stage"):
        write_bundle(tmp_path, tmp_path / "model.zip")
    with pytest.raises(LifecycleError, match="no finished onnx-model stage"):
        serving.resolve(tmp_path)


def test_cli_bundle(quantized_run, tmp_path, capsys):
    assert cli.main(["bundle", str(quantized_run), "-o", str(tmp_path / "m.zip")]) == 0
    assert (tmp_path / "m.zip").is_file() and "wrote" in capsys.readouterr().out
    assert cli.main(["bundle", str(quantized_run / "finetune"), "-o", str(tmp_path / "x.zip")]) == 1
    assert not (tmp_path / "x.zip").exists()


def test_external_data_travels_with_the_model(quantized_run, tmp_path):
    """An artifact whose model.onnx keeps its weights in an external file: the file is bundled (and
    hashed), and the bundle opens and predicts as the inline model does."""
    src = quantized_run / "export"
    tmp = tmp_path / "export.tmp"
    shutil.copytree(src, tmp)
    (tmp / "manifest.json").unlink()
    onnx.save_model(onnx.load(str(src / "model.onnx")), str(tmp / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    manifest = json.loads((src / "manifest.json").read_text())
    art = commit(tmp, tmp_path / "export", {k: v for k, v in manifest.items() if k != "files"})
    out = write_bundle(art.path, tmp_path / "ext.zip")
    with zipfile.ZipFile(out) as zf:
        assert "model.onnx.data" in json.loads(zf.read("manifest.json"))["files"]
    assert Predictor.open(out).check() == 8
