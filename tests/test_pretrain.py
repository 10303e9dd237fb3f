"""pretrain stage: real Trainer steps on tiny models (2 layers, hidden 32), masked-LM and causal-LM,
the masked-positions-only MLM loss, and crash-resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lifecycle import ConfigError
from lifecycle import pipeline as runner
from lifecycle.config import build

NEWS = Path(__file__).parent / "data" / "news_tiny.jsonl"
TINY_BERT = {"preset": "bert-tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64},
             "tokenizer": {"vocab_size": 400}}


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)


def raw_pipeline(model=TINY_BERT, train=None, **stage) -> dict:
    return {
        "name": "pt", "seed": 0,
        "data": {"text": {"format": "jsonl", "path": str(NEWS), "label_field": None, "split": {"validation": 0.2}},
                 "news": {"format": "jsonl", "path": str(NEWS), "split": {"validation": 0.2, "test": 0.2}}},
        "stages": [{"kind": "pretrain", "data": "text", "model": model, "block_size": 32,
                    "train": train or {"max_steps": 12, "batch_size": 8, "lr": 2e-3, "logging_steps": 4,
                                       "eval_steps": 6, "save_steps": 6}, **stage}],
    }


def test_pretrain_mlm_artifact_metrics_and_probe(tmp_path):
    from transformers import AutoModelForMaskedLM

    p = build(raw_pipeline(probe={"data": "news", "max_length": 32, "limit": 60}), base_dir=tmp_path)
    [outcome] = runner.run(p, workdir=tmp_path, echo=lambda *a: None)
    art = outcome.artifact
    assert set(art.manifest["files"]) == {"config.json", "model.safetensors", "special_tokens_map.json",
                                          "tokenizer.json", "tokenizer_config.json"}
    m = art.metrics
    assert m["world_size"] == 1 and m["train_tokens"] == 12 * 8 * 32 and m["tokens_per_second"] > 0
    assert m["perplexity"] > 1 and m["unigram_perplexity"] > 1
    assert m["perplexity_vs_unigram"] == pytest.approx(m["perplexity"] / m["unigram_perplexity"])
    assert m["documents_read"] == 300 and m["dropped_duplicate"] == 2
    history = art.manifest["details"]["log_history"]
    assert [r["step"] for r in history if "eval_loss" in r][:2] == [6, 12]
    assert all("eval_perplexity" in r for r in history if "eval_loss" in r)
    assert json.loads((art.path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    model = AutoModelForMaskedLM.from_pretrained(art.path, use_safetensors=True)  # a stock class loads it
    # the recorded probe describes the saved model: 12 steps leave its features near chance (5 topics: 0.2,
    # measured 0.25), so no bar above chance would hold; the same probe of the saved weights must agree
    from lifecycle import data as datalib
    from lifecycle import models
    from lifecycle.components.probe import probe_accuracy

    news = datalib.load(p.data["news"], p)
    again = probe_accuracy(model, models.load_tokenizer(art.path, 32), news, p.stages[0].probe, p.seed)
    assert again["probe_accuracy"] == pytest.approx(m["probe_accuracy"]), (again, m["probe_accuracy"])
    assert not any((tmp_path / "pt" / ".scratch").iterdir())  # checkpoints go once the artifact is sealed


def test_pretrain_gpt_causal_lm(tmp_path):
    from transformers import AutoModelForCausalLM

    model = {"preset": "gpt-tiny", "overrides": {"n_embd": 32}, "tokenizer": {"vocab_size": 400}}
    # 160 steps of this model take ~1.5 s; measured: validation perplexity 123 (evaluations at 40..160
    # steps: 137 -> 123) against 143 for the unigram model of the training blocks, 400 for a uniform guess.
    train = {"max_steps": 160, "batch_size": 4, "lr": 2e-3, "logging_steps": 40, "eval_steps": 40, "save_steps": 160}
    p = build(raw_pipeline(model, train), base_dir=tmp_path)
    [outcome] = runner.run(p, workdir=tmp_path, echo=lambda *a: None)
    art = outcome.artifact
    assert art.manifest["details"]["objective"] == "clm"
    evals = [r["eval_loss"] for r in art.manifest["details"]["log_history"] if "eval_loss" in r]
    assert len(evals) >= 4 and evals[-1] < evals[0], evals  # validation loss fell while it trained
    m = art.metrics
    assert 1 < m["perplexity"] < m["unigram_perplexity"], m  # it learned context, not only token frequencies
    AutoModelForCausalLM.from_pretrained(outcome.artifact.path, use_safetensors=True)


def test_masked_positions_loss_equals_full_head():
    """Same weights, same batch: the sparse head gives BertForMaskedLM's loss and gradients."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from lifecycle.components.language_model import plain_model, sparse_mlm_class

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    sparse = sparse_mlm_class()(config)
    dense = BertForMaskedLM(config)
    dense.load_state_dict(sparse.state_dict())
    sparse.eval(), dense.eval()  # no dropout: the two must see identical activations
    ids = torch.randint(5, 300, (4, 24))
    labels = torch.full_like(ids, -100)
    labels[:, ::5] = ids[:, ::5]
    a, b = sparse(input_ids=ids, labels=labels).loss, dense(input_ids=ids, labels=labels).loss
    a.backward()
    b.backward()
    assert torch.allclose(a, b, atol=1e-6)
    grads = lambda m: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])  # noqa: E731
    assert torch.allclose(grads(sparse), grads(dense), atol=1e-6)
    assert type(plain_model(sparse)) is BertForMaskedLM


def test_pretrain_needs_a_preset_and_known_metrics(tmp_path):
    raw = raw_pipeline(model={"path": "somewhere"})
    with pytest.raises(ConfigError, match="adapt"):
        build(raw, base_dir=tmp_path)
    raw = raw_pipeline(block_size=1024)
    with pytest.raises(ConfigError, match="exceed the model's 512 positions"):
        build(raw, base_dir=tmp_path)
    raw = raw_pipeline(gates=[{"metric": "accuracy", "min": 0.5}])
    with pytest.raises(ConfigError, match="cannot produce 'accuracy'"):
        build(raw, base_dir=tmp_path)


def _lifecycle_run(pipeline_file: Path, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    code = "import sys; from lifecycle.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "run", str(pipeline_file), "--workdir", str(workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # three processes of ~10 s each, two of them in parallel
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Kill the stage (SIGKILL) after its first checkpoint, run again: it resumes and ends on the same
    loss as a run that was never interrupted."""
    train = {"max_steps": 40, "batch_size": 8, "lr": 2e-3, "logging_steps": 10, "save_steps": 10,
             "eval_steps": 1000}
    pipeline_file = tmp_path / "p.yaml"
    pipeline_file.write_text(yaml.safe_dump(raw_pipeline(train=train)))
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    clean = _lifecycle_run(pipeline_file, clean_dir)  # runs alongside: one thread each on two cores
    victim = _lifecycle_run(pipeline_file, killed_dir)
    deadline = time.time() + 120
    while not list(killed_dir.glob("pt/.scratch/*/checkpoints/checkpoint-*/trainer_state.json")):
        assert victim.poll() is None and time.time() < deadline, victim.communicate()[0][-3000:]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "pt" / "pretrain").exists(), "the run finished before it could be killed"

    resumed = _lifecycle_run(pipeline_file, killed_dir)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming from" in out
    assert clean.wait(timeout=300) == 0, clean.communicate()[0][-3000:]

    def result(workdir):
        manifest = json.loads((workdir / "pt" / "pretrain" / "manifest.json").read_text())
        return manifest["metrics"], manifest["details"]["resumed_from_step"]

    (m_resumed, step), (m_clean, clean_step) = result(killed_dir), result(clean_dir)
    assert step > 0 and clean_step == 0
    assert abs(m_resumed["train_loss"] - m_clean["train_loss"]) <= 1e-6
    assert abs(m_resumed["eval_loss"] - m_clean["eval_loss"]) <= 1e-6
