import json

import pytest

from lifecycle.artifact import MANIFEST, Artifact, ArtifactError, commit, stable_hash


def make(tmp_path, name="a"):
    tmp = tmp_path / f"{name}.tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "weights.bin").write_bytes(b"\x00" * 100)
    (tmp / "sub" / "config.json").write_text("{}")
    return commit(tmp, tmp_path / name, {"kind": "hf-model", "cache_key": "k1", "metrics": {"accuracy": 0.5}})


def test_commit_is_a_rename_and_lists_every_file(tmp_path):
    art = make(tmp_path)
    assert not (tmp_path / "a.tmp").exists()
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "sub", "weights.bin"]
    assert set(art.manifest["files"]) == {"weights.bin", "sub/config.json"}
    loaded = Artifact.load(art.path)
    assert loaded.cache_key == "k1" and loaded.metrics == {"accuracy": 0.5}
    assert loaded.digest == stable_hash(loaded.manifest["files"])


def test_changed_file_is_refused_naming_the_file(tmp_path):
    art = make(tmp_path)
    (art.path / "sub" / "config.json").write_text('{"x": 1}')
    with pytest.raises(ArtifactError, match=r"sub/config.json: changed"):
        Artifact.load(art.path)


def test_truncated_or_missing_file_is_refused(tmp_path):
    art = make(tmp_path)
    with open(art.path / "weights.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ArtifactError, match="weights.bin"):
        Artifact.load(art.path)
    (art.path / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match="weights.bin: listed in the manifest but missing"):
        Artifact.load(art.path)


def test_extra_file_is_refused(tmp_path):
    art = make(tmp_path)
    (art.path / "planted.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match="planted.py"):
        Artifact.load(art.path)


def test_directory_without_manifest_is_not_an_artifact(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Artifact.load(tmp_path / "x")
    (tmp_path / "x" / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        Artifact.load(tmp_path / "x")


def test_recommit_replaces_the_old_artifact_whole(tmp_path):
    make(tmp_path)
    tmp = tmp_path / "a.tmp"
    tmp.mkdir()
    (tmp / "new.bin").write_bytes(b"1")
    art = commit(tmp, tmp_path / "a", {"kind": "hf-model", "cache_key": "k2"})
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "new.bin"]
    assert json.loads((art.path / MANIFEST).read_text())["cache_key"] == "k2"
    assert not (tmp_path / "a.old").exists()
