"""The release registry is the MLflow Model Registry: `lifecycle promote` registers a model version (the
ONNX graph as an MLflow model, the edge bundle, test predictions, gates, card and digests) and moves an
alias; `lifecycle gate --against` reads it back and verifies it. Against MLflow's SQLite backend (the
default store, no server) and against a real `mlflow server` process; a real tiny finetune -> export run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle import cli, promotion, release, tracking


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny finetune -> export run (its gates pass)."""
    root = tmp_path_factory.mktemp("mlflow-registry")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()))
    assert cli.main(["run", str(root / "tiny.yaml"), "--workdir", str(root / "runs")]) == 0
    return root / "runs" / "tiny"


@pytest.fixture(autouse=True)
def no_team_server(monkeypatch):
    """A developer's own MLFLOW_TRACKING_URI or LIFECYCLE_REGISTRY must not leak into these tests."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LIFECYCLE_REGISTRY", raising=False)


def cli_err(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(uri: str, name: str = "tiny") -> dict[str, str]:
    return {a: str(v) for a, v in client(uri).get_registered_model(name).aliases.items()}


def stored(uri: str, alias: str = "production", name: str = "tiny") -> tuple[object, Path]:
    """The model version behind `alias` and the folder of a local artifact store its files sit in."""
    mv = client(uri).get_model_version_by_alias(name, alias)
    assert mv.source.startswith("file://"), mv.source
    return mv, Path(mv.source.removeprefix("file://"))


# ------------------------------------------------------------------------------------------- SQLite
def test_promote_registers_a_version_and_gate_reads_it_back(run, tmp_path, capsys):
    registry = tmp_path / "registry"
    code, err = cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)
    assert code == 0, err
    uri = f"sqlite:///{registry / 'mlflow.db'}"
    assert tracking.store_uri(registry) == uri and (registry / "mlflow.db").is_file()
    mv, folder = stored(uri)
    export = release.candidate(run)
    assert str(mv.version) == "1" and mv.status == "READY" and mv.tags["lifecycle.digest"] == export.digest
    assert folder.is_relative_to(registry / "artifacts")  # beside the database, not ./mlruns
    assert {"MLmodel", "model.onnx", "model.zip", "predictions/test.jsonl", "gates.json", "model_card.md",
            "entry.json"} <= {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    entry = json.loads((folder / "entry.json").read_text())
    assert entry["digest"] == export.digest and entry["test_examples"] == 60 and entry["bundle"] == "model.zip"
    assert "onnx" in yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert "MLflow Model Registry" in (folder / "model_card.md").read_text()

    import mlflow.onnx  # MLflow's own loader reads the release as an ONNX model

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        graph = mlflow.onnx.load_model("models:/tiny@production")
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert [i.name for i in graph.graph.input][0] == "input_ids"

    for against in ("production", "models:/tiny@production", "models:/tiny/1", "v1"):
        capsys.readouterr()
        assert cli.main(["gate", str(run), "--against", against, "--registry", str(registry)]) == 0, against
        assert "McNemar p=1" in capsys.readouterr().out


def test_aliases_move_and_an_artifact_keeps_its_version(run, tmp_path, capsys):
    registry = tmp_path / "registry"
    uri = tracking.store_uri(registry)
    promote = ["promote", run, "--registry", registry]
    assert cli_err(capsys, *promote, "--alias", "production")[0] == 0
    assert cli_err(capsys, *promote, "--alias", "staging")[0] == 0  # the same export: version 1 again
    assert cli_err(capsys, *promote, "--stage", "finetune", "--alias", "candidate")[0] == 0
    assert aliases(uri) == {"production": "1", "staging": "1", "candidate": "2"}
    assert cli_err(capsys, *promote, "--stage", "finetune", "--alias", "production")[0] == 0  # production moves
    assert aliases(uri) == {"production": "2", "staging": "1", "candidate": "2"}
    assert len(client(uri).search_model_versions("name = 'tiny'")) == 2
    assert release.resolve("production", registry, "tiny").meta["stage"] == "finetune"
    assert release.resolve("staging", registry, "tiny").meta["stage"] == "export"
    assert cli_err(capsys, *promote, "--alias", "v3")[0] == 2  # MLflow reserves v<number> and latest
    assert cli_err(capsys, *promote, "--alias", "other", "--model", "team-classifier")[0] == 0
    assert aliases(uri, "team-classifier") == {"other": "1"}


@pytest.mark.parametrize("edit", ["change", "remove", "add", "entry"])
def test_a_changed_release_is_refused_naming_the_file(edit, run, tmp_path, capsys):
    registry = tmp_path / "registry"
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)[0] == 0
    _, folder = stored(tracking.store_uri(registry))
    preds = folder / "predictions" / "test.jsonl"
    if edit == "change":  # a release made to look better: every prediction right
        rows = [json.loads(x) for x in preds.read_text().splitlines()]
        preds.write_text("".join(json.dumps({**r, "pred": r["label"]}) + "\n" for r in rows))
        name, what = "predictions/test.jsonl", "changed in the artifact store"
    elif edit == "remove":
        (folder / "model.zip").unlink()
        name, what = "model.zip", "missing from the artifact store"
    elif edit == "add":
        (folder / "extra.onnx").write_bytes(b"x")
        name, what = "extra.onnx", "added to the artifact store"
    else:  # entry.json rewritten to list the edited file's hash: the version's tag still holds entry.json's
        entry = json.loads((folder / "entry.json").read_text())
        entry["metrics"]["accuracy"] = 1.0
        (folder / "entry.json").write_text(json.dumps(entry))
        name, what = "entry.json", "changed in the artifact store"
    code, err = cli_err(capsys, "gate", run, "--against", "production", "--registry", registry)
    assert code == 1 and len(err) == 1 and name in err[0] and what in err[0] and "models:/tiny/1" in err[0], err
    # a pipeline gate against it is a failed gate naming the file, never a pass
    record = json.loads((run / "pipeline.json").read_text())
    record["pipeline"]["stages"][1]["gates"].append({"metric": "accuracy", "max_drop": 0.01, "vs": "release:production"})
    (tmp_path / "run").mkdir()
    copy = tmp_path / "run" / "tiny"
    shutil.copytree(run, copy)
    (copy / "pipeline.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli.main(["gate", str(copy), "--registry", str(registry)]) == 3
    assert name in capsys.readouterr().out


def test_a_missing_release_is_named(run, tmp_path, capsys):
    registry = tmp_path / "registry"
    against = ["gate", run, "--registry", registry, "--against"]
    code, err = cli_err(capsys, *against, "production")
    assert code == 1 and len(err) == 1 and f"the registry {registry} is empty" in err[0], err
    assert not registry.exists()  # reading creates nothing
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)[0] == 0
    for ref, says in [("nope", "model 'tiny' has no alias 'nope'"), ("models:/tiny/7", "has no version 7"),
                      ("models:/other@production", "model 'other' has no alias 'production'")]:
        code, err = cli_err(capsys, *against, ref)
        assert code == 1 and len(err) == 1 and says in err[0] and "aliases: " in err[0], (ref, err)
    assert "production -> v1" in cli_err(capsys, *against, "nope")[1][0]
    assert cli_err(capsys, *against, "models:/tiny")[0] == 2  # neither @alias nor /version

    _, folder = stored(tracking.store_uri(registry))
    shutil.rmtree(folder)  # the version's files deleted from the artifact store
    code, err = cli_err(capsys, *against, "production")
    assert code == 1 and len(err) == 1 and "models:/tiny/1" in err[0] and "cannot be read from the artifact store" in err[0], err


def test_a_failed_promotion_leaves_no_version(run, tmp_path, capsys):
    """The artifact store cannot be written (a file where its folder goes): one line, no model version, the
    run that was to carry the files marked FAILED; then the folder fixed, the same promotion succeeds."""
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "artifacts").write_text("in the way")
    code, err = cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)
    assert code == 1 and len(err) == 1 and "the MLflow registry at" in err[0], err
    uri = tracking.store_uri(registry)
    assert client(uri).search_model_versions("name = 'tiny'") == []
    runs = client(uri).search_runs([client(uri).get_experiment_by_name(release.EXPERIMENT).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    (registry / "artifacts").unlink()
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)[0] == 0
    assert [str(v.version) for v in client(uri).search_model_versions("name = 'tiny'")] == ["1"]


def test_the_default_store_and_the_old_folder_registry(run, tmp_path, monkeypatch, capsys):
    """$LIFECYCLE_REGISTRY (tests, or a user's own folder) holds the SQLite store; a folder registry of an
    older lifecycle is named, not read as an empty store, and `python -m lifecycle.promotion migrate` copies
    its versions and aliases into MLflow."""
    from lifecycle.artifact import hash_tree
    from lifecycle.evaluation import TEST_PREDICTIONS, Predictions

    monkeypatch.setenv("LIFECYCLE_REGISTRY", str(tmp_path / "home"))
    assert cli_err(capsys, "promote", run, "--alias", "production")[0] == 0
    assert (tmp_path / "home" / "mlflow.db").is_file()
    assert cli_err(capsys, "gate", run, "--against", "production")[0] == 0

    old, art = tmp_path / "old", release.candidate(run)  # what the folder registry wrote for this export
    version = old / "versions" / "v1"
    (version / "predictions").mkdir(parents=True)
    shutil.copy(art.path / TEST_PREDICTIONS, version / TEST_PREDICTIONS)
    (version / "gates.json").write_text(json.dumps(art.manifest["gates"]))
    (version / "model_card.md").write_text("# Model card\n")
    meta = {"version": "v1", "pipeline": "tiny", "stage": "export", "stage_kind": "export", "kind": art.kind,
            "digest": art.digest, "metrics": art.metrics, "test_examples": 60, "bundle": None, "bundle_sha256": None,
            "test_fingerprint": Predictions.load(art.path / TEST_PREDICTIONS).fingerprint,
            "verdict": {"passed": True, "reasons": [], "override": None}, "files": hash_tree(version)}
    (version / "entry.json").write_text(json.dumps(meta))
    (old / "aliases.json").write_text('{"production": "v1", "previous": "v1"}')
    for argv in (["promote", run, "--alias", "production"], ["gate", run, "--against", "production"]):
        code, err = cli_err(capsys, *argv, "--registry", old)
        assert code == 1 and len(err) == 1 and f"{old}: a folder registry" in err[0] and "migrate" in err[0], err

    new = tmp_path / "new"
    assert promotion.main(["migrate", str(old), "--registry", str(new)]) == 0
    assert "v1 -> models:/tiny/1 @previous @production" in capsys.readouterr().out
    assert aliases(tracking.store_uri(new)) == {"production": "1", "previous": "1"}
    assert cli_err(capsys, "gate", run, "--against", "previous", "--registry", new)[0] == 0
    assert release.resolve("production", new, "tiny").meta["migrated_from"] == str(version)
    assert promotion.main(["migrate", str(old), "--registry", str(new)]) == 0  # again: the same version, no new one
    assert len(client(tracking.store_uri(new)).search_model_versions("name = 'tiny'")) == 1


# ------------------------------------------------------------------------------------ a real server
@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a port the kernel picks (--port 0: its log says which, so no free-port race),
    SQLite behind it and its artifacts proxied into a folder; its whole process group stopped after."""
    import httpx

    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner workers on 2 cores
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "0",
                                 "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                 "--artifacts-destination", str(tmp_path / "served")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
            try:
                if found and httpx.get(found[1] + "/health", timeout=2, trust_env=False).status_code == 200:
                    url = found[1]
            except httpx.HTTPError:
                pass
        assert url is not None, log.read_text()[-3000:]
        yield url, tmp_path / "served"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_promote_and_gate_against_a_running_mlflow_server(run, mlflow_server, tmp_path, monkeypatch, capsys):
    url, served = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # every machine of a team points here
    code, err = cli_err(capsys, "promote", run, "--alias", "production")
    assert code == 0, err
    mv = client(url).get_model_version_by_alias("tiny", "production")
    assert mv.tags["lifecycle.digest"] == release.candidate(run).digest and mv.source.startswith("mlflow-artifacts:")
    assert cli_err(capsys, "gate", run, "--against", "models:/tiny@production") == (0, [])
    assert cli_err(capsys, "promote", run, "--stage", "finetune", "--alias", "production")[0] == 0
    assert aliases(url) == {"production": "2"}
    assert cli_err(capsys, "gate", run, "--against", "production")[0] == 0
    # tamper with the stored file on the server's side: refused, naming it
    run_id = client(url).get_model_version("tiny", "2").run_id
    (preds,) = [p for p in served.rglob("predictions/test.jsonl") if run_id in p.parts]
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    preds.write_text("".join(json.dumps({**r, "pred": r["label"]}) + "\n" for r in rows))
    code, err = cli_err(capsys, "gate", run, "--against", "production")
    assert code == 1 and len(err) == 1 and "predictions/test.jsonl changed" in err[0] and url in err[0], err


def test_an_unreachable_server_is_one_line(run, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port that was just free and is closed again: nothing listens on it
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take a minute
    for argv in (["gate", run, "--against", "production"], ["promote", run, "--alias", "production"]):
        code, err = cli_err(capsys, *argv)
        assert code == 1 and len(err) == 1 and f"the MLflow registry at {url}" in err[0], err
