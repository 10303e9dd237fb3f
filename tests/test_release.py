"""Release gates: `lifecycle promote` registers a run's model in the MLflow Model Registry; `lifecycle gate
--against` and `vs: "release:NAME"` compare a candidate with it on the same test examples (paired).
Real fine-tunes of a 2-layer model on a keyword task with fixed train/validation/test files: the same
model again, another seed, and one trained on half-shuffled labels."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_finetune import MODEL, TRAIN, keyword_data

from lifecycle import ConfigError, LifecycleError, config, gates, pipeline, promotion, release
from lifecycle.cli import main
from lifecycle.evaluation import TEST_PREDICTIONS
from lifecycle.schema import Gate

# A large test split: one example is 0.125 points, so a retrain that differs on a few texts stays
# within a 1-point non-inferiority margin even at the upper end of its interval.
SPLITS = {"train": 640, "validation": 60, "test": 800}
TRAIN_LONGER = {**TRAIN, "epochs": 10}  # converged: seeds 0-2 score 0.999-1.0, half-shuffled labels ~0.98


def write_splits(root: Path, shuffle_half: bool = False, test_rows: int | None = None) -> dict:
    """The keyword task as three files; `shuffle_half`: half the training rows get another row's label."""
    lines = keyword_data(root / "all.jsonl", n=sum(SPLITS.values()), seed=3).read_text().splitlines()
    files, start = {}, 0
    for name, n in SPLITS.items():
        rows = [json.loads(x) for x in lines[start:start + n]]
        start += n
        if name == "train" and shuffle_half:
            rng = random.Random(1)
            idx = rng.sample(range(n), n // 2)
            labels = [rows[i]["label"] for i in idx]
            rng.shuffle(labels)
            for i, label in zip(idx, labels):
                rows[i]["label"] = label
        if name == "test" and test_rows:
            rows = rows[:test_rows]
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {k: str(v) for k, v in files.items()}


def raw(files: dict, seed: int = 0, gates_: list | None = None, name: str = "rel", train: dict = TRAIN_LONGER) -> dict:
    return {"name": name, "seed": seed, "data": {"kw": {"format": "jsonl", **files}},
            "task": {"data": "kw", "max_length": 24},
            "stages": [{"kind": "finetune", "model": MODEL, "train": train, "gates": gates_ or []}]}


def run(cfg: dict, workdir: Path) -> Path:
    pipeline.run(config.build(cfg, base_dir=workdir), workdir=workdir, echo=lambda *a, **k: None)
    return workdir / cfg["name"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The baseline (seed 0), a retrain with seed 1, a model trained on half-shuffled labels, and one
    scored on a shorter test file; and a registry with the baseline promoted to production."""
    tmp = tmp_path_factory.mktemp("release")
    (tmp / "data").mkdir()
    (tmp / "noisy").mkdir()
    (tmp / "short").mkdir()
    files = write_splits(tmp / "data")
    out = {"files": files, "registry": tmp / "registry",
           "base": run(raw(files), tmp / "base"),
           "reseed": run(raw(files, seed=1), tmp / "reseed"),
           "degraded": run(raw(write_splits(tmp / "noisy", shuffle_half=True)), tmp / "degraded"),
           # refused for its test set whatever its quality: one epoch is enough
           "short": run(raw(write_splits(tmp / "short", test_rows=700), train={**TRAIN, "epochs": 1}),
                        tmp / "short-run")}
    assert main(["promote", str(out["base"]), "--alias", "production", "--registry", str(out["registry"])]) == 0
    return out


def gate_cli(runs, name: str, *extra: str) -> int:
    return main(["gate", str(runs[name]), "--against", "production", "--registry", str(runs["registry"]), *extra])


def test_every_classifier_writes_its_test_predictions(runs):
    art = release.candidate(runs["base"])
    rows = [json.loads(x) for x in (art.path / TEST_PREDICTIONS).read_text().splitlines()]
    assert len(rows) == SPLITS["test"] and TEST_PREDICTIONS in art.manifest["files"]  # sealed, verified
    assert sum(r["pred"] == r["label"] for r in rows) / len(rows) == pytest.approx(art.metrics["accuracy"])


def test_promote_stores_a_verified_versioned_entry(runs):
    from mlflow import MlflowClient

    from lifecycle import tracking

    entry = release.resolve("production", runs["registry"], "rel")
    assert entry.version == "v1" and entry.meta["stage"] == "finetune" and entry.meta["test_examples"] == 800
    assert set(entry.meta["files"]) == {"predictions/test.jsonl", "gates.json", "model_card.md"}
    assert entry.meta["bundle"] is None  # a PyTorch model: no edge bundle (promote an export to get one)
    card = (entry.path / "model_card.md").read_text()
    assert "## Intended task" in card and "food, sports, tech, travel" in card and "## Lineage" in card
    assert release.resolve("v1", runs["registry"], "rel").number == "1" == release.resolve("models:/rel/1", runs["registry"]).number
    # the same artifact promoted again reuses its version; another one becomes v2 and moves only its alias
    assert promotion.promote(runs["base"], "staging", runs["registry"]).version == "v1"
    assert promotion.promote(runs["reseed"], "candidate", runs["registry"]).version == "v2"
    uri = tracking.store_uri(runs["registry"])
    registered = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("rel")
    assert {a: str(v) for a, v in registered.aliases.items()} == {"production": "1", "staging": "1", "candidate": "2"}
    stored = Path(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("rel", "1").source.removeprefix("file://"))
    (stored / "predictions" / "test.jsonl").write_text("")  # a release is verified when resolved
    try:
        with pytest.raises(LifecycleError, match="predictions/test.jsonl changed in the artifact store"):
            release.resolve("production", runs["registry"], "rel")
    finally:
        (stored / "predictions" / "test.jsonl").write_bytes(
            (release.candidate(runs["base"]).path / TEST_PREDICTIONS).read_bytes())


def test_identical_candidate_passes_with_a_zero_interval(runs, tmp_path):
    junit = tmp_path / "junit.xml"
    assert gate_cli(runs, "base", "--bound", "upper_ci", "--junit", str(junit)) == 0
    case = [c for c in ET.parse(junit).getroot().iter("testcase") if "release:production" in c.get("name")]
    assert len(case) == 1 and case[0].find("failure") is None
    text = case[0].find("system-out").text
    assert "delta +0.0000" in text and "McNemar p=1" in text and "[+0.0000, +0.0000]" in text


def test_retrained_seed_passes_non_inferiority(runs):
    base = release.resolve("production", runs["registry"], "rel")
    gate = Gate(metric="accuracy", max_drop=0.01, vs="release:production", bound="upper_ci")
    result = gates.check_release(gate, release.candidate(runs["reseed"]), base)
    # the keyword task is learnt (nearly) whole by any seed: a few discordant texts of 800 at most, so even
    # the strict bound holds
    assert result.passed and result.interval[0] > -0.01 and result.p_value > 0.05, result.message
    assert gate_cli(runs, "reseed") == 0 and gate_cli(runs, "reseed", "--metric", "f1_macro") == 0


def test_degraded_candidate_fails_with_a_significant_drop(runs, tmp_path, capsys):
    base = release.resolve("production", runs["registry"], "rel")
    art = release.candidate(runs["degraded"])
    result = gates.check_release(Gate(metric="accuracy", max_drop=0.01, vs="release:production"), art, base)
    assert not result.passed and result.p_value < 0.05 and result.interval[1] < -0.01, result.message
    assert result.value < result.reference == base.metrics["accuracy"]
    junit = tmp_path / "junit.xml"
    assert gate_cli(runs, "degraded", "--junit", str(junit)) == 3
    assert "McNemar p=" in capsys.readouterr().out
    failure = next(c for c in ET.parse(junit).getroot().iter("testcase")
                   if "release:production" in c.get("name")).find("failure")
    assert "95% CI" in failure.get("message") and "p=" in failure.get("message")


def test_different_test_data_is_refused(runs, capsys):
    assert gate_cli(runs, "short") == 2
    err = capsys.readouterr().err
    assert "other test examples" in err and "700 vs 800 examples" in err


def test_cli_exit_codes(runs, tmp_path, capsys):
    assert main(["gate", str(runs["base"]), "--against", "nope", "--registry", str(runs["registry"])]) == 1
    assert "no release 'nope'" in capsys.readouterr().err
    assert main(["gate", str(runs["base"]), "--against", "production", "--registry", str(tmp_path / "empty")]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["gate", str(runs["base"]), "--against", "production", "--bound", "median"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["promote", str(runs["base"])])  # --alias is required
    assert exc.value.code == 2
    assert main(["promote", str(runs["base"]), "--alias", "../x", "--registry", str(runs["registry"])]) == 2
    assert main(["gate", str(runs["base"]), "--against", "production", "--registry", str(runs["registry"]),
                 "--stage", "nope"]) == 2


def test_pipeline_gate_against_a_release(runs, tmp_path, monkeypatch):
    """`vs: "release:production"` in the pipeline file: checked on the sealed artifact, recorded in
    report.json with its verdict, interval and p-value; gates are not in the cache key, so this re-gates
    the finished runs without training."""
    monkeypatch.setenv("LIFECYCLE_REGISTRY", str(runs["registry"]))
    gate = {"metric": "accuracy", "max_drop": 0.01, "vs": "release:production", "bound": "upper_ci"}
    workdir = runs["reseed"].parent
    run(raw(runs["files"], seed=1, gates_=[gate]), workdir)
    entry = json.loads((runs["reseed"] / "report.json").read_text())["stages"][0]["gates"][0]
    assert entry["verdict"] == "pass" and entry["p_value"] is not None and len(entry["interval"]) == 2
    degraded = runs["degraded"]
    resolved = json.loads((degraded / "pipeline.json").read_text())
    resolved["pipeline"]["stages"][0]["gates"] = [gate]
    (degraded / "pipeline.json").write_text(json.dumps(resolved))
    assert main(["gate", str(degraded)]) == 3  # re-checked from the run directory, registry from the env
    assert main(["gate", str(degraded), "--registry", str(tmp_path / "empty")]) == 3  # no release: a failed gate


def test_release_gate_config_rules():
    stage = {"kind": "finetune", "model": MODEL, "train": TRAIN}
    base = {"name": "c", "data": {"kw": {"format": "jsonl", "path": "x.jsonl"}}, "task": {"data": "kw"}}

    def build(gate):
        return config.build({**base, "stages": [{**stage, "gates": [gate]}]}, base_dir=Path("."))

    # no earlier stage needed, and a confidence bound needs no seeds against a release
    build({"metric": "f1_macro", "max_drop": 0.02, "vs": "release:production", "bound": "upper_ci"})
    build({"metric": "torch_latency_p95_ms", "max_ratio": 1.2, "vs": "release:production"})
    for gate, match in [({"metric": "accuracy", "min": 0.9, "vs": "release:production"}, "max_drop, min_gain"),
                        ({"metric": "bleu", "max_drop": 0.01, "vs": "release:production"}, "cannot produce"),
                        ({"metric": "torch_latency_p95_ms", "max_ratio": 1.2, "vs": "release:prod", "bound": "upper_ci"},
                         "paired per-example"),
                        ({"metric": "accuracy", "max_drop": 0.01, "vs": "release:"}, "needs an alias"),
                        ({"metric": "accuracy", "max_drop": 0.01, "vs": "finetune2"}, "not an earlier stage")]:
        with pytest.raises(ConfigError, match=match):
            build(gate)


def test_promoting_an_onnx_run_stores_its_bundle_with_a_model_card(tmp_path_factory, tmp_path):
    import zipfile

    from test_export import run_tiny, shared_workdir

    run_dir = run_tiny(shared_workdir(tmp_path_factory))
    registry = tmp_path / "registry"
    entry = promotion.promote(run_dir, "production", registry)
    assert entry.meta["stage"] == "export" and entry.meta["bundle"] == "model.zip"
    with zipfile.ZipFile(entry.path / "model.zip") as zf:
        assert "model_card.md" in zf.namelist()
        assert json.loads(zf.read("manifest.json"))["files"]["model_card.md"]
    assert main(["gate", str(run_dir), "--against", "production", "--registry", str(registry),
                 "--metric", "accuracy", "--metric", "f1_macro", "--bound", "upper_ci"]) == 0
