"""Models and data sets by Hub id (lifecycle.hub), offline, from a real huggingface_hub cache built here from
a locally saved tiny BERT and the tiny news set; and `lifecycle export-hf` (lifecycle.hub_export)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TESTS, tiny_pipeline

from lifecycle.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL, DATA = "lifecycle-test/bert-tiny", "lifecycle-test/news"
COMMIT1, COMMIT2, DATA_COMMIT = "1" * 40, "2" * 40, "d" * 40
README = """---
configs:
- config_name: tiny
  data_files:
  - split: train
    path: data/train-*.parquet
---
# news, 300 short texts
"""


def hub_repo(cache: Path, repo_id: str, files: Path, commit: str, refs: tuple[str, ...], repo_type: str = "model"):
    """`files` as `repo_id` at `commit` in huggingface_hub's cache layout, as snapshot_download leaves it:
    blobs named by content hash, snapshots/<commit>/<path> linking to them, refs/<name> holding the commit."""
    from huggingface_hub.file_download import repo_folder_name

    root = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    for f in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = root / "snapshots" / commit / f.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hub cache holding the tiny BERT (commit 1, tagged v1 and main) and the news set (config `tiny`)."""
    from datasets import Dataset
    from huggingface_hub import scan_cache_dir
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models

    root = tmp_path_factory.mktemp("hub")
    rows = [json.loads(line) for line in (TESTS / "data" / "news_tiny.jsonl").read_text().splitlines()]
    model_dir = root / "saved-model"
    source = models.ModelSource(preset="bert-tiny", tokenizer={"vocab_size": 800})
    tokenizer = models.train_tokenizer([r["text"] for r in rows], source.tokenizer, "bert", 48)
    config = models.preset_config(source, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    models.save(AutoModelForSequenceClassification.from_config(config), tokenizer, model_dir)
    data_dir = root / "saved-data"
    (data_dir / "data").mkdir(parents=True)
    # labels as a ClassLabel feature, as the Hub's data sets store them: the run must see their names
    Dataset.from_list(rows).class_encode_column("label").to_parquet(str(data_dir / "data" / "train-00000-of-00001.parquet"))
    (data_dir / "README.md").write_text(README)
    cache = root / "cache"
    hub_repo(cache, MODEL, model_dir, COMMIT1, ("main", "v1"))
    hub_repo(cache, DATA, data_dir, DATA_COMMIT, ("main",), repo_type="dataset")
    found = {(r.repo_id, r.repo_type): {rev.commit_hash: sorted(rev.refs) for rev in r.revisions}
             for r in scan_cache_dir(cache).repos}  # huggingface_hub reads it as one of its own caches
    assert found == {(MODEL, "model"): {COMMIT1: ["main", "v1"]}, (DATA, "dataset"): {DATA_COMMIT: ["main"]}}
    return root


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hub_cache / "datasets-cache"))
    return hub_cache / "cache"


def hub_pipeline(tmp: Path, model: str | dict = None, data: dict | None = None) -> Path:
    raw = tiny_pipeline(name="hubrun")
    raw["data"] = {"news": data or {"hub": DATA, "config": "tiny", "split": {"validation": 0.2, "test": 0.2}}}
    raw["stages"][0].update(model=model or {"hub": MODEL, "revision": "v1"},
                            train={"max_steps": 4, "batch_size": 32, "lr": 2e-3, "logging_steps": 2})
    path = tmp / "hub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def hub_run(hub_cache, tmp_path_factory):
    """The tiny pipeline (finetune the Hub BERT on the Hub news set, export) run offline from the cache."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache / "cache"),
                           "HF_DATASETS_CACHE": str(hub_cache / "datasets-cache")}.items():
            mp.setenv(key, value)
        tmp = tmp_path_factory.mktemp("hubrun")
        path = hub_pipeline(tmp)
        assert main(["run", str(path), "--workdir", str(tmp / "runs")]) == 0
    return path, tmp / "runs" / "hubrun"


def statuses(run_dir: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]}


def test_model_shorthand_tells_presets_paths_and_hub_ids_apart():
    from lifecycle.models import ModelSource

    assert ModelSource.model_validate("bert-tiny").preset == "bert-tiny"
    assert ModelSource.model_validate("./models/mine").path == "./models/mine"
    assert ModelSource.model_validate("google-bert/bert-base-uncased").hub == "google-bert/bert-base-uncased"
    assert ModelSource.model_validate("bert-base-uncased").hub == "bert-base-uncased"  # an old canonical id
    # unset Hub fields stay out of the dump (and so out of the cache keys of existing pipelines)
    assert "hub" not in ModelSource(preset="bert-tiny").model_dump()


def test_a_pipeline_naming_hub_ids_runs_offline_and_records_the_commits(hub_run):
    _, run_dir = hub_run
    manifest = json.loads((run_dir / "finetune" / "manifest.json").read_text())
    assert manifest["hub"] == {"model": {"id": MODEL, "revision": "v1", "commit": COMMIT1},
                               "data.news": {"id": DATA, "revision": "main", "commit": DATA_COMMIT}}
    assert statuses(run_dir) == {"finetune": "passed", "export": "passed"}
    labels = json.loads((run_dir / "finetune" / "config.json").read_text())["id2label"]
    assert sorted(labels.values()) == ["business", "entertainment", "politics", "sports", "tech"]


def test_a_moved_tag_re_runs_the_stage(hub_run, hub_cache, offline_cache, tmp_path):
    path, run_dir = hub_run
    work = tmp_path / "runs"
    shutil.copytree(run_dir, work / "hubrun", symlinks=True)
    assert main(["run", str(path), "--workdir", str(work)]) == 0
    assert statuses(work / "hubrun") == {"finetune": "cached", "export": "cached"}  # same commit: reused
    model = Path(offline_cache) / "models--lifecycle-test--bert-tiny"
    shutil.copytree(model / "snapshots" / COMMIT1, model / "snapshots" / COMMIT2, symlinks=True)
    (model / "refs" / "v1").write_text(COMMIT2)  # v1 now names another commit (same files)
    try:
        assert main(["run", str(path), "--workdir", str(work)]) == 0
    finally:
        (model / "refs" / "v1").write_text(COMMIT1)
        shutil.rmtree(model / "snapshots" / COMMIT2)
    assert statuses(work / "hubrun") == {"finetune": "passed", "export": "passed"}
    manifest = json.loads((work / "hubrun" / "finetune" / "manifest.json").read_text())
    assert manifest["hub"]["model"]["commit"] == COMMIT2


def test_gate_on_a_machine_without_the_hub_cache_reads_the_recorded_commits(hub_run, monkeypatch, tmp_path):
    _, run_dir = hub_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # a CI job gating a run made elsewhere
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets"))
    assert main(["gate", str(run_dir)]) == 0


def test_a_moved_data_ref_re_runs_the_stage(hub_run, offline_cache, tmp_path):
    path, run_dir = hub_run
    work = tmp_path / "runs"
    shutil.copytree(run_dir, work / "hubrun", symlinks=True)
    data = Path(offline_cache) / "datasets--lifecycle-test--news"
    moved = "e" * 40
    shutil.copytree(data / "snapshots" / DATA_COMMIT, data / "snapshots" / moved, symlinks=True)
    (data / "refs" / "main").write_text(moved)
    try:
        assert main(["run", str(path), "--workdir", str(work)]) == 0
    finally:
        (data / "refs" / "main").write_text(DATA_COMMIT)
        shutil.rmtree(data / "snapshots" / moved)
    assert statuses(work / "hubrun") == {"finetune": "passed", "export": "passed"}
    manifest = json.loads((work / "hubrun" / "finetune" / "manifest.json").read_text())
    assert manifest["hub"]["data.news"]["commit"] == moved


@pytest.mark.parametrize("missing", ["model", "data"])
def test_validate_refuses_an_id_missing_from_the_cache(offline_cache, tmp_path, capsys, missing):
    if missing == "model":
        path, repo = hub_pipeline(tmp_path, model="lifecycle-test/not-cached"), "lifecycle-test/not-cached"
    else:
        path, repo = hub_pipeline(tmp_path, data={"hub": "lifecycle-test/gone", "revision": "v2"}), "lifecycle-test/gone"
    assert main(["validate", str(path)]) == 1  # a missing input is a data error (exit 1), as a missing file is
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert repo in err and str(offline_cache) in err and ("stages[0].model:" if missing == "model" else "data.news:") in err
    assert ("'main'" if missing == "model" else "'v2'") in err


def test_a_repo_with_only_pickle_weights_is_refused(offline_cache, tmp_path, capsys):
    files = tmp_path / "pickled"
    files.mkdir()
    (files / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (files / "pytorch_model.bin").write_bytes(b"not loaded")
    hub_repo(offline_cache, "lifecycle-test/pickled", files, "p" * 40, ("main",))
    try:
        assert main(["validate", str(hub_pipeline(tmp_path, model="lifecycle-test/pickled"))]) == 1
    finally:
        shutil.rmtree(offline_cache / "models--lifecycle-test--pickled")
    err = capsys.readouterr().err
    assert "lifecycle-test/pickled" in err and "pytorch_model.bin" in err and "safetensors" in err


def test_export_hf_writes_a_hub_folder_whose_card_parses(hub_run, offline_cache, tmp_path):
    from huggingface_hub import ModelCard

    _, run_dir = hub_run
    out = tmp_path / "hf"
    assert main(["export-hf", str(run_dir), str(out)]) == 0
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "onnx/export/model.onnx"} <= names
    assert "manifest.json" not in names and not any(n.endswith((".bin", ".pt")) for n in names)
    data = ModelCard.load(out / "README.md").data
    assert (data.library_name, data.pipeline_tag, data.base_model, data.datasets) == (
        "transformers", "text-classification", MODEL, [DATA])
    assert "accuracy" in data.metrics
    finetune = json.loads((run_dir / "report.json").read_text())["stages"][0]["metrics"]
    scores = {r.metric_type: r.metric_value for r in data.eval_results}
    assert scores["accuracy"] == pytest.approx(finetune["accuracy"])
    assert (data.eval_results[0].dataset_type, data.eval_results[0].dataset_config) == (DATA, "tiny")


def test_export_hf_refuses_a_run_that_gate_refuses_and_leaves_nothing(hub_run, offline_cache, tmp_path, capsys):
    _, run_dir = hub_run
    copy = tmp_path / "runs" / "hubrun"
    shutil.copytree(run_dir, copy, symlinks=True)
    with open(copy / "finetune" / "config.json", "a") as f:
        f.write(" ")  # tampered: its hash no longer matches the manifest
    assert main(["export-hf", str(copy), str(tmp_path / "out" / "hf")]) == 3
    assert "refusing to export" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("data, model, field", [
    ({"hub": DATA, "path": "news.jsonl"}, None, "path: a Hub data set"),
    ({"format": "jsonl", "path": "news.jsonl", "revision": "v1"}, None, "revision: for a `hub` data set only"),
    (None, {"hub": "org/name/extra"}, "is not a Hub model id"),
    (None, {"path": "./here", "revision": "v1"}, "revision: for a `hub` model only"),
])
def test_hub_fields_are_checked_at_load(offline_cache, tmp_path, capsys, data, model, field):
    assert main(["validate", str(hub_pipeline(tmp_path, model=model, data=data))]) == 2
    assert field in capsys.readouterr().err
