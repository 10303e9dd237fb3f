"""A workload from outside the library (tests/toy_workload: vectors of numbers in, a sign out), registered
through entry points only, run end to end: finetune -> export -> quantize -> serve over HTTP, bundled and
checked on the edge runtime. Nothing under lifecycle/ names it."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = """\
[lifecycle.workloads]
toy = toy_workload

[lifecycle.edge.inputs]
vectors = toy_workload.edge:Vectors

[lifecycle.edge.answers]
sign = toy_workload.edge:sign
"""
PIPELINE = """\
name: toy
seed: 0
data:
  numbers: {format: jsonl, path: numbers.jsonl, split: {validation: 0.2, test: 0.2}}
task: {type: toy-sign, data: numbers}
stages:
  - kind: finetune
    model: {preset: bert-tiny}   # the toy recipe reads only its training budget
    train: {max_steps: 300, lr: 0.05}
    collapse_min: null
    gates:
      - {metric: accuracy, min: 0.85}
  - kind: export
    gates:
      - {metric: accuracy, max_drop: 0.0, vs: finetune}
  - kind: quantize
    method: dynamic-int8
    min_speedup: null            # a 3-16-2 perceptron is not faster in int8: only its answers are gated
    gates:
      - {metric: accuracy, max_drop: 0.05, vs: export}
  - kind: serve
    warmup_requests: 2
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A directory with the toy's dist-info (its entry points), a pipeline and its data; the environment
    that puts the toy package (tests/toy_workload) and the dist-info on the path of every process."""
    work = tmp_path_factory.mktemp("toy")
    info = work / "site" / "toy_workload-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-workload\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    rng = random.Random(0)
    with (work / "numbers.jsonl").open("w") as f:
        for _ in range(400):
            x = [round(rng.gauss(0, 1), 3) for _ in range(3)]
            label = "positive" if x[0] + 2 * x[1] - x[2] > 0 else "negative"
            f.write(json.dumps({"text": " ".join(map(str, x)), "label": label}) + "\n")
    (work / "toy.yaml").write_text(PIPELINE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(work / "site"),
                                                        os.environ.get("PYTHONPATH", "")]),
               LIFECYCLE_PLOTS="0", LIFECYCLE_REGISTRY=str(work / "registry"))
    return work, env


def lifecycle(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "lifecycle.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_toy_workload_is_found_through_its_entry_points_only(toy):
    work, env = toy
    listed = json.loads(lifecycle(env, "recipes", "--json", cwd=work).stdout)
    row = next(r for r in listed["recipes"] if r["run"] == "toy_workload.recipe:finetune")
    assert (row["stage"], row["inputs"], row["key"]) == ("finetune", "vectors", "sign")
    assert row["declared_by"].startswith("entry point toy")
    assert listed["tasks"]["toy-sign"] == {"inputs": "vectors", "answers": "sign"}
    out = lifecycle(env, "validate", "toy.yaml", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "recipe vectors/sign: toy_workload.recipe:finetune" in out.stdout
    # without the entry points the same pipeline names a task lifecycle does not know
    bare = dict(env, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    refused = lifecycle(bare, "validate", "toy.yaml", cwd=work)
    assert refused.returncode == 2 and "task.type: 'toy-sign' is not a task lifecycle knows" in refused.stderr
    # and nothing under lifecycle/ names it
    named = [str(f) for f in (ROOT / "lifecycle").rglob("*.py") if {"toy_workload", "toy-sign"} & set(
        f.read_text().replace('"', " ").replace(":", " ").split())]
    assert not named, named


def test_the_toy_workload_trains_exports_quantizes_and_is_served_over_http(toy):
    work, env = toy
    out = lifecycle(env, "run", "toy.yaml", "--workdir", "runs", cwd=work)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    report = json.loads((work / "runs" / "toy" / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert [s["status"] for s in report["stages"]] == ["passed"] * 4
    assert stages["finetune"]["metrics"]["accuracy"] >= 0.85
    assert stages["export"]["metrics"]["accuracy"] == stages["finetune"]["metrics"]["accuracy"]
    assert 0 < stages["quantize"]["metrics"]["score_max_abs_diff"] < 0.5  # int8 logits moved, not lost
    served = stages["serve"]["metrics"]  # real HTTP answers: scored, and each equal to the in-process one
    assert served["accuracy"] == stages["quantize"]["metrics"]["accuracy"]
    assert served["error_count"] == 0 and served["prediction_mismatches"] == 0

    bundle = work / "toy.zip"
    out = lifecycle(env, "bundle", "runs/toy", "-o", str(bundle), cwd=work)
    assert out.returncode == 0, out.stderr
    check = ("import sys, json; from lifecycle.edge import Predictor; p = Predictor.open(sys.argv[1]); "
             "print(json.dumps([p.check(), p.answer([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])]))")
    out = subprocess.run([sys.executable, "-c", check, str(bundle)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    matched, answers = json.loads(out.stdout)
    assert matched == 8
    assert [a["label"] for a in answers] == ["positive", "negative"]
