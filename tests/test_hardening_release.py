"""Hardening (issue 36), the exits of a run: `bundle`, `promote`, `serve` and `build` read the verdict `gate`
gives (a stale, unfinished or failed run is refused with its stages named, exit 3; `--override REASON` ships it
with a warning and records why); archives and manifests bounded before they are read; malformed manifests,
releases and output paths refused in one line; signed releases (`promote --sign`, `gate --against
--trusted-key`). Real runs, real zips, the real CLI, real `lifecycle serve` processes for what is served; where
a refusal must come before any server or Bento starts, a tripwire fails the test if one does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pipeline
from mlflow import MlflowClient

from lifecycle import cli, release, serving, tracking
from lifecycle.artifact import hash_tree
from lifecycle.bundle import write_bundle
from lifecycle.edge import MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBERS, BundleError, Predictor
from lifecycle.signing import generate_key


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny finetune -> export run (its gates pass), its pipeline file, and a good bundle of it."""
    root = tmp_path_factory.mktemp("exits")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()))
    assert cli.main(["run", str(root / "tiny.yaml"), "--workdir", str(root / "runs")]) == 0
    write_bundle(root / "runs" / "tiny", root / "good.zip")
    return root


@pytest.fixture
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path / "runs" / "tiny"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"release": generate_key(d / "release.key"), "other": generate_key(d / "other.key")}


@pytest.fixture
def no_server(monkeypatch):
    """A tripwire for the refusals: `bentoml serve` or `bentoml build` starting fails the test (the refusal
    must come first; a server left running would block it)."""
    def started(*_, **__):
        raise AssertionError("a server or Bento was started for what had to be refused")

    monkeypatch.setattr("lifecycle.serving.commands.foreground", started)
    monkeypatch.setattr("lifecycle.serving.build", started)


def served_verdict(*argv) -> tuple[dict | None, str]:
    """A real `lifecycle serve ARGV` on a loopback port it binds itself: GET /metadata's "verdict" once it is ready, then
    SIGTERM; returns it and what the command printed to stderr."""
    import signal

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "serve", *map(str, argv), "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = serving.server.listening_port(proc)  # bound by the server itself: no free-port race
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        metadata = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=10, trust_env=False).json()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]
    return metadata["verdict"], err


def stored_release(registry, alias: str = "production"):
    """The folder of the local artifact store that holds the files of the release behind `alias`."""
    uri = tracking.store_uri(registry)
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("tiny", alias)
    return Path(mv.source.removeprefix("file://"))


def cli_err(capsys, *argv) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `lifecycle ARGV`."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def stale(run_dir):
    """What a changed-config `lifecycle run` killed mid-finetune leaves: the new config recorded, the run not
    finished, the previous run's artifacts on disk (tests/test_verdict.py kills a real one)."""
    record = json.loads((run_dir / "pipeline.json").read_text())
    record["pipeline"]["stages"][0]["train"]["lr"] = 1e-3
    record["state"] = "running"
    (run_dir / "pipeline.json").write_text(json.dumps(record))


# ------------------------------------------------------------------------------ one verdict, every exit
EXITS = {
    "bundle": lambda r, t: ["bundle", r, "-o", t / "model.zip"],
    "bundle an artifact of the run": lambda r, t: ["bundle", r / "export", "-o", t / "model.zip"],
    "promote": lambda r, t: ["promote", r, "--alias", "production", "--registry", t / "registry"],
    "serve": lambda r, t: ["serve", r, "--port", "1"],
    "build": lambda r, t: ["build", r],
}


@pytest.mark.parametrize("exit_", EXITS)
def test_a_run_gate_fails_is_refused_by_every_exit(exit_, run, tmp_path, capsys, no_server):
    stale(run)
    assert cli_err(capsys, "gate", run)[0] == 3
    code, err = cli_err(capsys, *EXITS[exit_](run, tmp_path))
    assert code == 3 and len(err) == 1, err
    assert "stage 'finetune' is stale" in err[0] and "stage 'export' is stale" in err[0], err
    assert "did not finish" in err[0] and "--override" in err[0]
    assert not (tmp_path / "model.zip").exists() and not (tmp_path / "registry").exists()


def test_the_override_ships_and_records_the_refused_verdict(run, tmp_path, capsys):
    stale(run)
    why = "hotfix approved by the on-call"
    code, err = cli_err(capsys, "bundle", run, "-o", tmp_path / "model.zip", "--override", why)
    assert code == 0 and len(err) == 1 and err[0].startswith("warning: bundle") and why in err[0], err
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        verdict = json.loads(zf.read(MANIFEST))["verdict"]
    assert verdict["passed"] is False and verdict["override"] == why
    assert any("stage 'export' is stale" in r for r in verdict["reasons"])

    registry = tmp_path / "registry"
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry, "--override", why)[0] == 0
    entry = release.resolve("production", registry, "tiny")
    assert entry.meta["verdict"] == verdict
    with zipfile.ZipFile(entry.path / "model.zip") as zf:  # the release's bundle says so too
        assert json.loads(zf.read(MANIFEST))["verdict"] == verdict

    served, err = served_verdict(run, "--override", why)
    assert served == verdict and f"overrides a failed verdict ({why})" in err, err  # GET /metadata shows it
    # a bundle shipped under an override is served under the verdict it recorded
    assert served_verdict(tmp_path / "model.zip")[0] == verdict
    assert cli_err(capsys, "build", run, "--override", "")[0] == 2  # an override names its reason


@pytest.mark.slow
def test_build_with_the_override_records_it_in_the_bento(run, tmp_path):
    """A real `bentoml build` (~30 s): the Bento's serving.json, which its service reads, holds the verdict."""
    stale(run)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    build = [sys.executable, "-m", "lifecycle.cli", "build", str(run)]
    refused = subprocess.run(build, capture_output=True, text=True, env=env)
    assert refused.returncode == 3 and not (tmp_path / "bentoml" / "bentos").exists(), refused.stderr
    subprocess.run([*build, "--override", "demo"], capture_output=True, text=True, env=env, check=True)
    (config,) = (tmp_path / "bentoml" / "bentos").rglob("serving.json")
    verdict = json.loads(config.read_text())["model"]["verdict"]
    assert verdict["passed"] is False and verdict["override"] == "demo"


def test_a_passing_run_is_served_under_its_passing_verdict(run):
    served, err = served_verdict(run)
    assert served == {"passed": True, "reasons": [], "override": None} and "overrides a failed verdict" not in err, err


def test_promote_refuses_a_run_whose_gates_failed(run, tmp_path, capsys):
    """Its last stage failed a gate: `--stage finetune` picked a stage that passed its own (accepted before)."""
    raw = tiny_pipeline()
    raw["stages"][1]["gates"] = [{"metric": "accuracy", "min": 1.01}]
    (run.parent.parent / "tiny.yaml").write_text(yaml.safe_dump(raw))
    assert cli_err(capsys, "run", run.parent.parent / "tiny.yaml", "--workdir", run.parent)[0] == 3
    code, err = cli_err(capsys, "promote", run, "--stage", "finetune", "--alias", "production",
                        "--registry", tmp_path / "registry")
    assert code == 3 and len(err) == 1 and "export: accuracy" in err[0], err
    assert not (tmp_path / "registry").exists()


# --------------------------------------------------------------------------------- bounded before read
def test_many_small_members_that_expand_together_are_refused_before_extraction(tmp_path, monkeypatch, capsys,
                                                                              no_server):
    """400 members just under 1 MiB each (each under the per-member ratio check): ~400 MB from a ~0.5 MB zip
    was extracted before being refused."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, "{}")
        for i in range(400):
            zf.writestr(f"w{i}.bin", bytes((1 << 20) - 1))
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    with pytest.raises(BundleError, match="expand .* in all"):
        Predictor.open(bomb)
    code, err = cli_err(capsys, "serve", bomb, "--port", "1")
    assert code == 1 and len(err) == 1 and "in all" in err[0], err
    assert list((tmp_path / "scratch").iterdir()) == []


def test_too_many_members_are_refused_from_the_directory(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(MAX_MEMBERS + 1):
            zf.writestr(f"f{i}", b"")
    with pytest.raises(BundleError, match=f"{MAX_MEMBERS + 1} members"):
        Predictor.open(many)


def rewrite(src, dst, manifest: bytes, compression: int = zipfile.ZIP_DEFLATED):
    """A copy of the bundle zip `src` with another manifest.json."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename == MANIFEST:
                zout.writestr(MANIFEST, manifest, compress_type=compression)
            else:
                zout.writestr(info, zin.read(info.filename))
    return dst


def test_an_oversized_manifest_is_refused_before_it_is_read(finished, tmp_path, capsys, no_server):
    # stored, not deflated: the ratio check would refuse a padded manifest first
    big = rewrite(finished / "good.zip", tmp_path / "big.zip", b'{"pad": "' + b" " * MAX_MANIFEST_BYTES + b'"}',
                  zipfile.ZIP_STORED)
    code, err = cli_err(capsys, "serve", big, "--port", "1")
    assert code == 1 and len(err) == 1 and "manifest.json expands to" in err[0], err
    with pytest.raises(BundleError, match="manifest.json expands to"):
        Predictor.open(big)


def peak_rss_refusing(bundle) -> int:
    """Peak resident memory (bytes) of a fresh `lifecycle serve BUNDLE` that must refuse it (exit 1)."""
    code = ("import resource, sys; from lifecycle.cli import main; code = main(['serve', sys.argv[1], '--port', '1']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def test_refusing_a_400_mib_manifest_costs_no_more_memory_than_refusing_a_tiny_one(tmp_path):
    """The stated bound: refusing a malformed bundle costs at most 64 MiB more than refusing a tiny one (a
    400 MiB manifest member, 0.4 MB deflated, was read whole: ~860 MB resident)."""
    big, tiny = tmp_path / "big.zip", tmp_path / "tiny.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(MANIFEST, "w", force_zip64=True) as member:
        member.write(b'{"pad": "')
        for _ in range(400):
            member.write(b" " * (1 << 20))
        member.write(b'"}')
    with zipfile.ZipFile(tiny, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, "garbage{")
    assert big.stat().st_size < 2 << 20
    assert peak_rss_refusing(big) - peak_rss_refusing(tiny) < 64 << 20


@pytest.mark.parametrize("manifest", [b"garbage{", b"{}", b"[]", b'{"files": []}'])
def test_a_malformed_manifest_is_one_line(manifest, run, finished, tmp_path, capsys, no_server):
    bad = rewrite(finished / "good.zip", tmp_path / "bad.zip", manifest)
    with pytest.raises(BundleError):
        Predictor.open(bad)
    code, err = cli_err(capsys, "serve", bad, "--port", "1")
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    art = tmp_path / "export"  # an artifact outside its run: bundle checks its manifest itself
    shutil.copytree(run / "export", art)
    (art / MANIFEST).write_bytes(manifest)
    code, err = cli_err(capsys, "bundle", art, "-o", tmp_path / "m.zip")
    assert code == 1 and len(err) == 1 and str(art) in err[0], err
    code, err = cli_err(capsys, "serve", art, "--port", "1")
    assert code == 1 and len(err) == 1, err


@pytest.mark.parametrize("record", ["{}", "[]", "garbage{"])
def test_gate_on_a_malformed_run_record_is_one_line(record, run, capsys, no_server):
    (run / "pipeline.json").write_text(record)
    for argv in (["gate", run], ["bundle", run, "-o", run / "m.zip"], ["serve", run]):
        code, err = cli_err(capsys, *argv)
        assert code == 1 and len(err) == 1 and "pipeline.json" in err[0], (argv, err)


def test_registry_and_output_paths_are_one_line(run, tmp_path, capsys):
    registry = tmp_path / "registry-file"
    registry.write_text("not a directory")
    code, err = cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)
    assert code == 1 and len(err) == 1 and "registry-file: a file, not a registry directory" in err[0], err

    out = tmp_path / "out"
    out.mkdir()
    code, err = cli_err(capsys, "bundle", run, "-o", out)
    assert code == 1 and len(err) == 1 and "a directory" in err[0], err
    assert list(tmp_path.glob("*.part")) == [] and list(out.iterdir()) == []
    code, err = cli_err(capsys, "bundle", run, "-o", registry / "model.zip")  # its parent is a file
    assert code == 1 and len(err) == 1 and "cannot write the bundle" in err[0], err
    assert list(tmp_path.rglob("*.part")) == []

    registry = tmp_path / "registry"
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry)[0] == 0
    against = ["gate", run, "--against", "production", "--registry", registry]
    entry = stored_release(registry) / "entry.json"
    saved = entry.read_text()
    for content in ("[]", "garbage{"):  # the release record in the artifact store, malformed
        entry.write_text(content)
        code, err = cli_err(capsys, *against)
        assert code == 1 and len(err) == 1 and "entry.json" in err[0], (content, err)
        code, err = cli_err(capsys, "promote", run, "--alias", "staging", "--registry", registry)
        assert code == 1 and len(err) == 1 and "entry.json" in err[0], (content, err)
    entry.write_text(saved)
    assert cli_err(capsys, *against)[0] == 0


def test_gate_junit_into_a_missing_folder_creates_it(run, tmp_path, capsys):
    junit = tmp_path / "reports" / "ci" / "junit.xml"
    assert cli_err(capsys, "gate", run, "--junit", junit) == (0, [])
    assert "<testsuite" in junit.read_text()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-4"])
def test_plan_memory_must_be_a_positive_number(value, finished, capsys):
    code, err = cli_err(capsys, "plan", finished / "tiny.yaml", "--memory-gb", value, "--no-calibrate")
    assert code == 2 and "--memory-gb" in err[-1] and value in err[-1], err


# ------------------------------------------------------------------------------------ signed releases
def test_a_signed_release_and_a_rewritten_one(run, keys, tmp_path, capsys):
    """`promote --sign`: gate --against --trusted-key passes the release as signed; refuses it unsigned,
    signed by another key, or with metrics and file hashes rewritten together (which Entry.verify accepts)."""
    private, public = keys["release"]
    assert cli_err(capsys, "sign", run, private)[0] == 0  # --trusted-key checks the run too
    registry = tmp_path / "registry"
    assert cli_err(capsys, "promote", run, "--alias", "unsigned", "--registry", registry)[0] == 0
    assert cli_err(capsys, "promote", run, "--alias", "production", "--registry", registry, "--sign", private)[0] == 0
    version = stored_release(registry)  # the same artifact: one version, signed now
    assert (version / "entry.sig").is_file()

    def gate(*extra):
        capsys.readouterr()
        code = cli.main([str(a) for a in ["gate", run, "--against", "production", "--registry", registry, *extra]])
        return code, capsys.readouterr().out

    assert gate("--trusted-key", public)[0] == 0
    code, out = gate("--trusted-key", keys["other"][1])
    assert code == 3 and "bad signature: entry.json is not signed by a trusted key" in out, out
    (version / "entry.sig").rename(tmp_path / "entry.sig")
    code, out = gate("--trusted-key", public)
    assert code == 3 and "unsigned (no entry.sig)" in out, out
    (tmp_path / "entry.sig").rename(version / "entry.sig")

    # a release made to look better: every prediction right, accuracy 1.0, hashes recomputed to match
    preds = version / "predictions" / "test.jsonl"
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    preds.write_text("".join(json.dumps({**r, "pred": r["label"]}) + "\n" for r in rows))
    entry = json.loads((version / "entry.json").read_text())
    entry["metrics"]["accuracy"] = 1.0
    entry["files"] = {k: v for k, v in hash_tree(version).items() if k not in ("entry.json", "entry.sig")}
    (version / "entry.json").write_text(json.dumps(entry, indent=2))
    assert gate()[0] == 1  # refused: the registry database holds entry.json's digest as a version tag
    # ...unless that tag is rewritten too (write access to the registry database): without a trusted key it is
    # taken as the release (a refused one would be exit 1); the signature still refuses it
    from lifecycle.artifact import sha256_file

    MlflowClient(tracking_uri=tracking.store_uri(registry), registry_uri=tracking.store_uri(registry)).set_model_version_tag(
        "tiny", "1", "lifecycle.entry_sha256", sha256_file(version / "entry.json"))
    assert gate()[0] != 1
    code, out = gate("--trusted-key", public)
    assert code == 3 and "bad signature" in out and "FAIL  release:production signature" in out, out
