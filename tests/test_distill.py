"""distill stage: student layer choice and initialisation, the distillation loss, a real teacher ->
student run reporting retention and speedup, the hidden-state loss path, and gates through the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml
from test_finetune import MODEL, TRAIN, keyword_data, raw_pipeline, run

from lifecycle.cli import main
from lifecycle.components.distillation import distillation_loss, init_from_teacher, pick_layers

TEACHER = {"kind": "finetune", "name": "teacher", "model": MODEL, "train": TRAIN}  # 2 layers
# Latency at batch 8 x 64 tokens: enough work per call that layer count, not call overhead, dominates.
LATENCY = {"batch_size": 8, "seq_len": 64, "runs": 10}


def test_pick_layers_spreads_evenly_with_first_and_last():
    assert pick_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's own choice for BERT-base
    assert pick_layers(6, 3) == [0, 2, 5] and pick_layers(4, 2) == [0, 3] and pick_layers(4, 1) == [3]


def test_student_starts_from_the_chosen_teacher_layers():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = dict(vocab_size=50, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_labels=3)
    teacher = BertForSequenceClassification(BertConfig(num_hidden_layers=4, **cfg))
    student = BertForSequenceClassification(BertConfig(num_hidden_layers=2, **cfg))
    assert init_from_teacher(student, teacher, [0, 3]) == 1.0
    t, s = teacher.state_dict(), student.state_dict()
    for name in ("attention.self.query.weight", "output.dense.weight"):
        assert torch.equal(s[f"bert.encoder.layer.1.{name}"], t[f"bert.encoder.layer.3.{name}"])
        assert torch.equal(s[f"bert.encoder.layer.0.{name}"], t[f"bert.encoder.layer.0.{name}"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    narrow = BertForSequenceClassification(BertConfig(num_hidden_layers=2, **{**cfg, "intermediate_size": 16}))
    assert 0 < init_from_teacher(narrow, teacher, [0, 3]) < 1  # reshaped FFN tensors keep their random init


def test_distillation_loss_mixes_soft_and_hard_targets():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    s, t, y, T = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]), 3.0
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert distillation_loss(s, t, y, T, alpha=1.0).item() == pytest.approx(kl.item(), rel=1e-5)
    assert distillation_loss(s, t, y, T, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert distillation_loss(s, s, y, T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    data = keyword_data(tmp / "kw.jsonl", n=160)
    stage = {"kind": "distill", "temperature": 2.0, "alpha": 0.5, "train": {**TRAIN, "epochs": 4},
             "latency": LATENCY}
    arts = run(raw_pipeline(data, [TEACHER, stage], name="kd"), tmp)
    return tmp, data, arts


def test_distill_halves_the_layers_and_reports_retention_and_speedup(distilled):
    _, _, arts = distilled
    teacher, student = arts["teacher"], arts["distill"]
    assert json.loads((student.path / "config.json").read_text())["num_hidden_layers"] == 1
    assert student.manifest["details"]["student_layers"] == [1]
    m = student.metrics
    assert m["teacher_accuracy"] == pytest.approx(teacher.metrics["accuracy"])  # same test split, same model
    assert m["retention"] == pytest.approx(m["accuracy"] / m["teacher_accuracy"])
    assert m["retention"] >= 0.9 and m["accuracy"] >= 0.8
    assert m["speedup"] == pytest.approx(m["teacher_torch_latency_p50_ms"] / m["torch_latency_p50_ms"])
    assert m["speedup"] > 1.0 and m["compression"] > 1.2
    assert (m["latency_batch_size"], m["latency_seq_len"]) == (8, 64)


def hidden_distance(student_dir, teacher_dir, layer_map: list[int], texts: list[str], student=None) -> float:
    """The stage's own hidden-state loss (mean 1 - cosine, student layer j vs teacher layer layer_map[j])
    of a saved student (or `student`, a model in memory) against the teacher, on `texts`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lifecycle.components.distillation import hidden_loss

    enc = AutoTokenizer.from_pretrained(teacher_dir)(texts, return_tensors="pt", padding=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    student = (student or AutoModelForSequenceClassification.from_pretrained(student_dir)).eval()
    with torch.no_grad():
        t, s = (m(**enc, output_hidden_states=True).hidden_states for m in (teacher, student))
    return hidden_loss(s, t, layer_map, enc["attention_mask"]).item()


def test_hidden_state_loss_pulls_the_student_toward_the_teacher(distilled):
    """Same student start, same steps, same batches: with hidden_weight > 0 the student's hidden
    states end closer to the teacher's than where they started and than without the term."""
    import copy

    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification

    tmp, data, arts = distilled
    train = {**TRAIN, "max_steps": 6}
    stages = [TEACHER] + [{"kind": "distill", "name": name, "parent": "teacher", "hidden_weight": weight, "train": train,
                           "latency": {"runs": 3}, "latency_rounds": 1}
                          for name, weight in (("distill_hidden", 5.0), ("distill_plain", 0.0))]
    out = run(raw_pipeline(data, stages, name="kd"), tmp)
    hidden, plain = out["distill_hidden"], out["distill_plain"]
    assert hidden.metrics["train_steps"] == plain.metrics["train_steps"] == 6
    layer_map = hidden.manifest["details"]["student_layers"]
    assert layer_map == plain.manifest["details"]["student_layers"] == [1]

    teacher_dir = arts["teacher"].path
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    start = AutoModelForSequenceClassification.from_config(config)
    assert init_from_teacher(start, teacher, layer_map) == 1.0  # the stage's student before its first step
    texts = load_dataset("json", data_files=str(data), split="train")["text"][:64]
    before = hidden_distance(None, teacher_dir, layer_map, texts, student=start)
    with_term = hidden_distance(hidden.path, teacher_dir, layer_map, texts)
    without = hidden_distance(plain.path, teacher_dir, layer_map, texts)
    assert with_term < 0.8 * before, (before, with_term, without)
    assert with_term < 0.8 * without, (before, with_term, without)


def test_student_from_a_given_model_directory(distilled):
    tmp, data, arts = distilled
    stage = {"kind": "distill", "name": "distill_given", "parent": "teacher",
             "student": {"model": {"path": str(arts["distill"].path)}},  # the 1-layer student above
             "train": {**TRAIN, "max_steps": 4}, "latency": {"runs": 3}, "latency_rounds": 1}
    art = run(raw_pipeline(data, [TEACHER, stage], name="kd"), tmp)["distill_given"]
    assert json.loads((art.path / "config.json").read_text())["num_hidden_layers"] == 1
    assert art.manifest["details"]["newly_initialised"] == []  # a classifier of this task: nothing new


def test_max_drop_gate_fails_a_bad_student_through_the_cli(distilled):
    tmp, data, _ = distilled
    # A narrow, randomly initialised student that barely trains cannot stay within 0.05 of the teacher.
    stage = {"kind": "distill", "name": "bad_student", "parent": "teacher",
             "student": {"overrides": {"hidden_size": 32, "intermediate_size": 64}},
             "train": {**TRAIN, "max_steps": 2, "lr": 1.0e-9}, "latency": {"runs": 3}, "latency_rounds": 1,
             "gates": [{"metric": "accuracy", "max_drop": 0.05, "vs": "teacher"}],
             "collapse_min": None}  # it also predicts one class; only the max_drop gate is under test
    raw = {**raw_pipeline(data, [TEACHER, stage], name="kd"), "workdir": str(tmp)}
    path = tmp / "kd.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 3
    report = json.loads((tmp / "kd" / "report.json").read_text())
    statuses = {s["name"]: s["status"] for s in report["stages"]}
    assert statuses == {"teacher": "cached", "bad_student": "failed"}
    failure = next(ET.parse(tmp / "kd" / "junit.xml").getroot().iter("failure"))
    assert "accuracy" in failure.get("message", "") + (failure.text or "")
    assert main(["run", str(path), "--set", "stages.bad_student.gates.0.max_drop=1.0"]) == 0
    rerun = json.loads((tmp / "kd" / "report.json").read_text())  # the re-run's own report, not the first one
    assert rerun["passed"] is True and [s["status"] for s in rerun["stages"]] == ["cached", "cached"]
    bad = rerun["stages"][1]
    [gate] = bad["gates"]
    assert gate["passed"] is True and gate["metric"] == "accuracy" and gate["vs"] == "teacher"
    assert bad["metrics"]["accuracy"] < bad["metrics"]["teacher_accuracy"] - 0.05  # the same student: only the gate moved
    assert np.isfinite(bad["metrics"]["speedup"])


@pytest.mark.slow  # two processes start torch and gloo: ~40 s on 2 busy cores
def test_finetune_and_distill_under_torchrun(tmp_path):
    import os
    import subprocess
    import sys

    from lifecycle.artifact import Artifact

    data = keyword_data(tmp_path / "kw.jsonl")  # 120 training rows
    # 8 steps teach a 2-layer model nothing: it predicts one class and the default collapse gate (not what this
    # test is about: the ranks' mechanics) stopped the run with exit 3
    stages = [{**TEACHER, "train": {**TRAIN, "epochs": 2}, "collapse_min": None},
              {"kind": "distill", "train": {**TRAIN, "epochs": 2}, "latency": {"runs": 3}, "latency_rounds": 1,
               "collapse_min": None}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_pipeline(data, stages, name="ddp")))
    (tmp_path / "cli.py").write_text("import sys; from lifecycle.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "cli.py", "run",
           "p.yaml", "--workdir", "runs"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    run_dir = tmp_path / "runs" / "ddp"
    for name in ("teacher", "distill"):
        art = Artifact.load(run_dir / name)  # one sealed artifact per stage, every file's hash verified
        assert art.metrics["train_steps"] == 8  # 2 epochs x 120 rows / (16 per rank x 2 ranks): the ranks split batches
    assert not list(run_dir.glob("*.tmp*"))
