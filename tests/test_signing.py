"""Signed bundles (lifecycle.signing, `bundle --sign`, `Predictor.open(trusted_keys=)`, `serve --trusted-key`)
and the load check `lifecycle gate` calls (lifecycle.integrity). Real keys, real zips, real onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
from test_export import run_tiny, shared_workdir

from lifecycle import cli
from lifecycle.bundle import write_bundle
from lifecycle.edge import MANIFEST, SIGNATURE, BundleError, Predictor
from lifecycle.integrity import load_problem, onnx_load_problem
from lifecycle.signing import generate_key, require_signed


@pytest.fixture(scope="module")
def export_art(tmp_path_factory):
    """A private copy of the finished tiny finetune -> export run's export artifact."""
    run = run_tiny(shared_workdir(tmp_path_factory))
    copy = tmp_path_factory.mktemp("sign") / run.name
    shutil.copytree(run, copy)
    return copy / "export"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"release": generate_key(d / "release.key"), "other": generate_key(d / "other.key")}


@pytest.fixture(scope="module")
def signed(export_art, keys, tmp_path_factory):
    return write_bundle(export_art, tmp_path_factory.mktemp("signed") / "model.zip", sign=keys["release"][0])


def rewrite(src, dst, edit):
    """A copy of the zip `src` with `edit(name, bytes) -> bytes | None` applied to each member (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    return dst


def test_signed_bundle_opens_with_the_right_key(export_art, signed, keys):
    with zipfile.ZipFile(signed) as zf:
        assert SIGNATURE in zf.namelist()
        record = json.loads(zf.read(SIGNATURE))
    assert record["algorithm"] == "ed25519" and len(record["key_id"]) == 16
    p = Predictor.open(signed, trusted_keys=[keys["release"][1]])
    # the bundle answers its 8 recorded samples and carries the export's own manifest and scores
    assert p.check() == 8 and p.manifest["metrics"] == json.loads((export_art / "manifest.json").read_text())["metrics"]
    # several trusted keys: any one that verifies is enough; without trusted keys a signed bundle still opens
    Predictor.open(signed, trusted_keys=[keys["other"][1], keys["release"][1].read_bytes()])
    Predictor.open(signed)
    require_signed(signed, [keys["release"][1]])
    assert stat_mode(keys["release"][0]) == 0o600


def stat_mode(path):
    return path.stat().st_mode & 0o777


def test_unsigned_tampered_and_wrong_key_are_refused(export_art, signed, keys, tmp_path):
    trusted = [keys["release"][1]]
    unsigned = write_bundle(export_art, tmp_path / "unsigned.zip")
    with pytest.raises(BundleError, match="unsigned"):
        Predictor.open(unsigned, trusted_keys=trusted)
    with pytest.raises(BundleError, match="unsigned"):
        Predictor.open(export_art, trusted_keys=trusted)  # an artifact directory carries no signature
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        Predictor.open(signed, trusted_keys=[keys["other"][1]])

    # A metric edited in the manifest: the file hashes still match, the signature does not.
    def better_metric(name, data):
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["metrics"]["accuracy"] = 0.999
        return json.dumps(manifest, indent=2, sort_keys=True).encode()

    edited = rewrite(signed, tmp_path / "edited.zip", better_metric)
    Predictor.open(edited)  # without a trusted key only the hashes are checked, and they match
    with pytest.raises(BundleError, match="bad signature"):
        Predictor.open(edited, trusted_keys=trusted)
    # The model and its hash in the manifest both replaced: consistent hashes, broken signature.
    import hashlib

    with zipfile.ZipFile(signed) as zf:
        model = zf.read("model.onnx")
    swapped_model = model + b"\0"  # trailing bytes: still the same protobuf for onnxruntime

    def swap(name, data):
        if name == "model.onnx":
            return swapped_model
        if name == MANIFEST:
            manifest = json.loads(data)
            manifest["files"]["model.onnx"] = hashlib.sha256(swapped_model).hexdigest()
            return json.dumps(manifest, indent=2, sort_keys=True).encode()
        return data

    rehashed = rewrite(signed, tmp_path / "rehashed.zip", swap)
    with pytest.raises(BundleError, match="bad signature"):
        Predictor.open(rehashed, trusted_keys=trusted)
    # a signature that is not even readable
    garbled = rewrite(signed, tmp_path / "garbled.zip", lambda n, d: b"{" if n == SIGNATURE else d)
    with pytest.raises(BundleError, match="unreadable manifest.sig"):
        Predictor.open(garbled, trusted_keys=trusted)
    # the private key is not a trusted key
    with pytest.raises(BundleError, match="not a PEM public key"):
        Predictor.open(signed, trusted_keys=[keys["release"][0]])


def test_cli_sign_and_trusted_key_exit_codes(export_art, keys, tmp_path, capsys):
    out = tmp_path / "m.zip"
    assert cli.main(["bundle", str(export_art), "-o", str(out), "--sign", str(keys["release"][0])]) == 0
    assert Predictor.open(out, trusted_keys=[keys["release"][1]]).manifest is not None
    # a public key is no signing key: one line, exit 1
    capsys.readouterr()
    assert cli.main(["bundle", str(export_art), "-o", str(tmp_path / "x.zip"), "--sign", str(keys["release"][1])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "private key" in err and err.count("\n") == 1
    assert not (tmp_path / "x.zip").exists()
    # serve refuses before starting anything: unsigned, wrong key, missing key file
    unsigned = write_bundle(export_art, tmp_path / "unsigned.zip")
    for source, key, message in [(unsigned, keys["release"][1], "unsigned"), (out, keys["other"][1], "bad signature"),
                                 (export_art, keys["release"][1], "unsigned"),
                                 (out, tmp_path / "missing.pub", "cannot read the trusted key")]:
        assert cli.main(["serve", str(source), "--trusted-key", str(key)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_keygen_module_and_edge_stays_light(tmp_path):
    env_py = sys.executable
    done = subprocess.run([env_py, "-m", "lifecycle.signing", str(tmp_path / "k")], capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "k").is_file() and (tmp_path / "k.pub").is_file()
    again = subprocess.run([env_py, "-m", "lifecycle.signing", str(tmp_path / "k")], capture_output=True, text=True)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    # lifecycle.edge imports neither torch nor cryptography until a trusted key is given
    probe = ("import sys, lifecycle.edge; print(any(m in sys.modules for m in ('torch', 'cryptography', 'transformers')))")
    assert subprocess.run([env_py, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_load_check_for_gate(export_art, tmp_path):
    from lifecycle.artifact import Artifact

    assert onnx_load_problem(export_art / "model.onnx") is None
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all")
    assert "cannot be loaded" in onnx_load_problem(bad)
    bad.write_bytes(b"\x08\x07")  # valid protobuf (ir_version 7), but no graph: onnxruntime refuses it
    assert "cannot be loaded by onnxruntime" in onnx_load_problem(bad)
    assert "missing" in onnx_load_problem(tmp_path / "absent.onnx")

    good = Artifact.load(export_art)
    broken_dir = tmp_path / "broken"
    shutil.copytree(export_art, broken_dir)
    (broken_dir / "model.onnx").write_bytes(b"\x08\x07garbage")
    broken = Artifact.load(broken_dir, verify=False)  # re-hashed or not: the manifest cannot make it load
    finetune = Artifact.load(export_art.parent / "finetune")
    assert load_problem(finetune) is None and load_problem(good) is None
    assert "cannot be loaded" in load_problem(broken)
    (broken_dir / "model.safetensors").write_bytes(b"\xff" * 16)
    from lifecycle.integrity import safetensors_load_problem

    assert "cannot be read as safetensors" in safetensors_load_problem(broken_dir)


def test_every_server_worker_verifies_the_signature(signed, keys, tmp_path):
    """`serve --trusted-key`: the keys travel to the BentoML workers, which open the bundle with them. A
    worker given a key that did not sign the bundle refuses to load it, so the server never gets ready;
    with the signing key it answers like the model in-process."""
    import httpx

    from lifecycle import LifecycleError, serving

    served = serving.resolve(signed)
    settings = serving.ServingSettings()
    for key, ready in ((keys["other"][1], False), (keys["release"][1], True)):
        served.trusted_keys = [key.read_text()]
        with serving.checked(served):  # extracts the zip once, as `lifecycle serve` does
            config = serving.write_config(served, settings, tmp_path / "serving.json")
            assert json.loads(config.read_text())["model"]["trusted_keys"] == [key.read_text()]
            if not ready:
                # BentoML keeps the server up and restarts the refusing worker; the wait ends at the worker's
                # refusal, with its reason, long before the startup timeout
                started = time.monotonic()
                with pytest.raises(LifecycleError, match="bundle refused.*signature"), \
                        serving.Server(config, log=tmp_path / "bad.log", startup_timeout_s=120):
                    pass
                assert time.monotonic() - started < 60
                continue
            with serving.Server(config, log=tmp_path / "good.log") as server:
                got = httpx.post(server.url + "/classify", json={"texts": ["Shares rose"]}, timeout=30).json()
    assert got[0]["label"] == Predictor.open(signed).predict(["Shares rose"])[0]["label"]


def test_signed_run_gate_trusted_key(export_art, keys, tmp_path, capsys):
    """`run --sign` (all stages cached here), then `gate --trusted-key`: passes as signed; fails (exit 3, in
    junit.xml too) when unsigned, signed by another key, or when a manifest's metric was edited afterwards,
    which no file hash catches."""
    from test_export import TINY

    run = export_art.parent
    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(json.dumps(TINY))  # JSON is YAML; the data path in it is absolute
    workdir = tmp_path / "runs"
    shutil.copytree(run, workdir / run.name)
    run = workdir / run.name
    trusted = ["--trusted-key", str(keys["release"][1])]

    def gate(*extra):
        capsys.readouterr()
        code = cli.main(["gate", str(run), *trusted, *extra])
        return code, capsys.readouterr().out

    code, out = gate()
    assert code == 3 and "FAIL  run signature" in out and "unsigned" in out, out
    assert "unsigned" in (run / "junit.xml").read_text()
    assert cli.main(["run", str(yaml), "--workdir", str(workdir), "--sign", str(keys["release"][0])]) == 0
    assert "cached" in capsys.readouterr().out  # nothing retrained: the signature covers the artifacts as they were
    code, out = gate()
    assert code == 0 and "pass  run signature" in out, out
    assert cli.main(["gate", str(run), "--trusted-key", str(keys["other"][1])]) == 3
    assert "bad signature" in capsys.readouterr().out
    # an edited metric: every file hash still matches, so only the signature notices
    manifest = run / "export" / MANIFEST
    m = json.loads(manifest.read_text())
    m["metrics"]["accuracy"] = 1.0
    manifest.write_text(json.dumps(m, indent=2))
    assert cli.main(["gate", str(run)]) == 0
    code, out = gate()
    assert code == 3 and "changed since it was signed: export/manifest.json" in out, out
    # signing needs a finished run and a private key; neither failure writes anything
    (run / "run.sig").unlink()
    assert cli.main(["sign", str(run), str(keys["release"][1])]) == 1
    assert "private key" in capsys.readouterr().err and not (run / "run.sig").exists()
    assert cli.main(["sign", str(tmp_path), str(keys["release"][0])]) == 1
    assert "not a readable run directory" in capsys.readouterr().err
