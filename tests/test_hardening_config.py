"""Hardening (issue 17), config, data and training side: the adversarial case matrix in
tests/adversarial/config_cases.yaml walked through the real CLI, resume past a half-written checkpoint,
NaN-safe parity, and (slow) SIGKILL at random points of a training run, again and again."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifecycle.cli import main

CASES = yaml.safe_load((Path(__file__).parent / "adversarial" / "config_cases.yaml").read_text())

BASE = {
    "name": "adv",
    "seed": 0,
    "data": {"news": {"format": "csv", "path": "data.csv", "split": {"validation": 0.2, "test": 0.2}}},
    "task": {"data": "news", "max_length": 16},
    "stages": [{"kind": "finetune", "model": {"preset": "bert-tiny", "tokenizer": {"vocab_size": 120, "min_frequency": 1}},
                "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1}, "latency": {"runs": 2}}],
}
DATA = "text,label\n" + "".join(f"{'sunny warm beach' if i % 2 else 'cold snow storm'} day {i},{'ab'[i % 2]}\n"
                                for i in range(40))


def merged(base, patch):
    """`patch` over `base`: mappings by key, lists item by item (a case names only what it changes)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merged(base.get(k), v) if k in base else v for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list):
        return [merged(b, p) for b, p in zip(base, patch)] + base[len(patch):] + patch[len(base):]
    return patch


def leftovers(root: Path) -> list[str]:
    """What a failed run must not leave: a partial artifact (*.tmp), half-written JSON (*.part) or stage
    scratch space."""
    found = [*root.rglob("*.tmp"), *root.rglob("*.part")] + [p for d in root.rglob(".scratch") for p in d.iterdir()]
    return sorted(str(p.relative_to(root)) for p in found)


def write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, tmp_path, capsys):
    assert set(case) <= {"id", "pipeline", "config", "data", "set", "command", "exit", "message"}, case["id"]
    pipeline_file = tmp_path / "pipeline.yaml"
    write(pipeline_file, case["config"] if "config" in case else
          yaml.safe_dump(merged(copy.deepcopy(BASE), case.get("pipeline", {})), sort_keys=False))
    write(tmp_path / "data.csv", case.get("data", DATA))
    argv = [case["command"], str(pipeline_file)]
    for item in case.get("set", []):
        argv += ["--set", item]
    if case["command"] == "run":
        argv += ["--workdir", str(tmp_path / "work")]

    code = main(argv)
    err = capsys.readouterr().err
    assert code == case["exit"], err[-2000:]
    assert case["message"] in err
    if case["exit"]:
        # one line (a progress bar of the Trainer may precede it on the same terminal line)
        errors = [line[line.index("error: "):] for line in err.splitlines() if "error: " in line]
        assert len(errors) == 1, err[-2000:]
        if case["exit"] == 1:  # a data or training error names the file or stage on that one line
            assert case["message"] in errors[0]
    assert leftovers(tmp_path) == []
    # Nothing escaped the temporary directory, whatever the name said.
    assert not (tmp_path.parent / "escaped").exists()


# ------------------------------------------------------------------------ half-written checkpoints
def tiny_classifier_and_data():
    """A 1-layer BERT classifier and 16 random labelled sequences: real Trainer steps in milliseconds."""
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"input_ids": rng.integers(1, 64, size=(16, 8)).tolist(),
                              "attention_mask": [[1] * 8] * 16, "labels": (np.arange(16) % 2).tolist()})
    return model, data


def _tiny_trainer(out: Path, max_steps: int):
    from transformers import Trainer

    from lifecycle.components.training import TrainConfig, training_args

    model, data = tiny_classifier_and_data()
    cfg = TrainConfig(max_steps=max_steps, save_steps=1, batch_size=4, lr=1e-3, logging_steps=1)
    return Trainer(model=model, args=training_args(cfg, out, seed=0, eval_strategy="no"), train_dataset=data)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


HALF_WRITTEN = {
    "no trainer_state.json": lambda d: (d / "trainer_state.json").unlink(),
    "truncated trainer_state.json": lambda d: _truncate(d / "trainer_state.json"),
    "truncated weights": lambda d: _truncate(d / "model.safetensors"),
    "no weights": lambda d: (d / "model.safetensors").unlink(),
    "no optimizer": lambda d: (d / "optimizer.pt").unlink(),
    "truncated optimizer": lambda d: _truncate(d / "optimizer.pt"),
}


@pytest.mark.parametrize("damage", sorted(HALF_WRITTEN))
def test_resume_takes_the_newest_complete_checkpoint(damage, tmp_path, capsys):
    """A kill while checkpoint-3 was being written: the re-run resumes from checkpoint-2 (and says so),
    drops the broken one, and finishes; it never fails on the broken directory."""
    from lifecycle import quiet
    from lifecycle.components import checkpoints as ck
    from lifecycle.components import training

    checkpoints = tmp_path / "checkpoints"
    with quiet.training():  # as training.train runs it: checkpoints a step apart make the Trainer warn of mtimes
        _tiny_trainer(checkpoints, max_steps=3).train()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    HALF_WRITTEN[damage](checkpoints / "checkpoint-3")
    assert ck.last_checkpoint(checkpoints) == checkpoints / "checkpoint-2"

    trainer = _tiny_trainer(checkpoints, max_steps=4)
    training.train(trainer, checkpoints, echo=print)
    out = capsys.readouterr().out
    assert "discarding incomplete checkpoint checkpoint-3" in out
    assert "resuming from checkpoint-2" in out
    assert trainer.state.global_step == 4
    assert ck.checkpoint_problem(checkpoints / "checkpoint-4") is None  # the new one is whole


def test_no_complete_checkpoint_starts_over(tmp_path, capsys):
    from lifecycle.components import training

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-5").mkdir(parents=True)  # killed before the first file landed
    trainer = _tiny_trainer(checkpoints, max_steps=2)
    training.train(trainer, checkpoints, echo=print)
    assert "resuming" not in capsys.readouterr().out and trainer.state.global_step == 2
    assert not (checkpoints / "checkpoint-5").exists()


# ---------------------------------------------------------------------------------- NaN parity
def test_parity_and_agreement_count_non_finite_values_as_failure():
    from lifecycle.components.onnx import argmax_agreeing, max_abs_diff
    from lifecycle.gates import check
    from lifecycle.schema import Gate

    ok = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    nan = np.full_like(ok, np.nan)
    assert max_abs_diff(ok, ok + 1e-6) == pytest.approx(1e-6, abs=1e-7)
    assert np.isnan(max_abs_diff(nan, nan))  # NaN - NaN is no match
    assert np.isnan(max_abs_diff(ok, np.where([[True, False], [True, True]], ok, np.inf)))
    assert np.isnan(max_abs_diff(np.full_like(ok, np.inf), np.full_like(ok, np.inf)))
    assert argmax_agreeing(ok, ok) == 2 and argmax_agreeing(nan, nan) == 0
    gate = Gate(metric="parity_max_abs_diff", max=1e-4)
    assert not check(gate, {"parity_max_abs_diff": max_abs_diff(nan, nan)}, None, None).passed


def test_parity_of_a_nan_model_fails(tmp_path):
    """export's parity check on a real model whose weights went NaN, against its exported ONNX graph
    opened by the project's onnxruntime Predictor."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lifecycle.components.onnx import export_torch, onnx_input_names, parity, write_runtime_files
    from lifecycle.edge import Predictor
    from lifecycle.workloads.text.classification import TASK as CLASSIFICATION

    tokenizer = _word_tokenizer()
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, num_labels=2)).eval()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    src, out = tmp_path / "src", tmp_path / "onnx"
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    out.mkdir()
    export_torch(model, tokenizer, out / "model.onnx", opset=17)
    write_runtime_files(out, src, tokenizer, 16, onnx_input_names(out / "model.onnx"),
                        CLASSIFICATION.graph_schema(model), CLASSIFICATION.labels(model))
    result = parity(model, tokenizer, Predictor.open(out), ["a b", "c d e f"], 16)
    assert np.isnan(result["parity_max_abs_diff"])  # was 0.0: max(0.0, nan) kept the 0.0
    assert result["argmax_agreement"] == 0.0  # was 1.0: argmax of NaN rows is 0 on both sides


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"abcdef"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


# -------------------------------------------------------------------- SIGKILL at random points
def _lifecycle_run(pipeline_file: Path, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "run", str(pipeline_file), "--workdir", str(workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def last_step(workdir: Path) -> int:
    steps = [int(p.name.rsplit("-", 1)[1]) for p in workdir.glob("adv/.scratch/*/checkpoints/checkpoint-*")]
    return max(steps, default=0)


KILLS = int(os.environ.get("LIFECYCLE_KILLS", "20"))
KILL_BUDGET_S = float(os.environ.get("LIFECYCLE_KILL_BUDGET_S", "420"))


@pytest.mark.slow  # ~20 process starts of a few seconds each
def test_sigkill_at_random_points_always_resumes_to_the_same_result(tmp_path):
    """SIGKILL a smoke-sized finetune at random moments (checkpoints every step, so many kills land
    while one is being written), again and again in the same workdir: each re-run resumes by itself,
    and every run that finishes reports the metrics of a run that was never interrupted."""
    raw = merged(copy.deepcopy(BASE), {"stages": [{"train": {"max_steps": 24, "save_steps": 1, "eval_steps": 8,
                                                             "logging_steps": 4, "lr": 2e-3}}]})
    raw["deterministic"] = True
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text(yaml.safe_dump(raw))
    (tmp_path / "data.csv").write_text(DATA)

    def metrics(workdir: Path) -> dict:
        m = json.loads((workdir / "adv" / "finetune" / "manifest.json").read_text())["metrics"]
        return {k: m[k] for k in ("eval_loss", "accuracy", "f1_macro", "train_steps")}

    started = time.time()
    clean = _lifecycle_run(pipeline_file, tmp_path / "clean")
    out = clean.communicate(timeout=300)[0]
    assert clean.returncode == 0, out[-3000:]
    reference = metrics(tmp_path / "clean")

    rng = random.Random(17)
    work = tmp_path / "killed"
    kills = finished = resumed = 0
    deadline = time.time() + KILL_BUDGET_S
    while kills < KILLS and time.time() < deadline:
        # Kill once the checkpoint of a random later step appeared, plus a jitter of about one step: with
        # a checkpoint every step most kills land while one is being written (or rotated away). A target
        # past the last step lets the run finish.
        target = rng.randint(last_step(work) + 1, 27)
        proc = _lifecycle_run(pipeline_file, work)
        while proc.poll() is None and last_step(work) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            continue
        out = proc.communicate()[0]
        assert proc.returncode == 0, out[-3000:]  # never a run that needs a manual clean-up
        resumed += "resuming from checkpoint-" in out
        got = metrics(work)
        for key, value in reference.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (key, out[-2000:])
        finished += 1
        # A broken artifact (it lists no files): the next run retrains and replaces it. (With no manifest at
        # all it would be refused as somebody's folder, not an artifact.)
        (work / "adv" / "finetune" / "manifest.json").write_text("{}")
    print(f"{kills} kills, {finished} finished runs ({resumed} resumed) in {time.time() - started:.0f} s")
    assert kills >= min(KILLS, 5) and finished >= 1 and resumed >= 1
