"""The generation task: loss masking, the ONNX decoder with its KV cache (parity with PyTorch, with and without
the cache, GPT-2 and Llama), the edge generator (stop strings, seeded sampling, context refusal), and a tiny
pipeline pretrain -> finetune (LoRA, response tokens only) -> export -> int8."""

import json
from pathlib import Path

import numpy as np
import pytest

from lifecycle.schema import Task

DATA = Path(__file__).parent / "data"
NEWS, PAIRS = DATA / "news_tiny.jsonl", DATA / "continue_tiny.jsonl"
TEXTS = [json.loads(line)["text"] for line in NEWS.read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)


def tiny_decoder(preset: str, out: Path):
    """A tiny decoder from a preset (random weights) and a BPE tokenizer trained on the news texts, saved to `out`."""
    import torch

    from lifecycle import models

    spec = models.ModelSource(preset=preset, overrides={"max_position_embeddings": 64} if preset.startswith("llama")
                              else {"n_positions": 64})
    tokenizer = models.train_tokenizer(TEXTS, models.TokenizerSpec(vocab_size=300), "gpt2", 64)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    config = models.preset_config(spec, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    models.save(model, tokenizer, out)
    return model, models.load_tokenizer(out, 64)


def exported(preset: str, tmp: Path, prompt_field=None):
    """(PyTorch model, tokenizer, Predictor over the generation task's export of it)."""
    from lifecycle.edge import Predictor
    from lifecycle.workloads.decoders.generation import TASK

    src, out = tmp / "model", tmp / "onnx"
    out.mkdir(parents=True)
    model, _ = tiny_decoder(preset, src)
    task = Task(type="generation", data="x", max_length=64,
                generation={"prompt_field": prompt_field, "new_tokens": 12})
    tokenizer = TASK.preprocessor(src, task)
    TASK.export_graph(model, tokenizer, out / "model.onnx", 17)  # the export stage's default opset
    from lifecycle.components.onnx import onnx_input_names

    TASK.write_runtime_files(out, src, tokenizer, task, onnx_input_names(out / "model.onnx"), model)
    return model, tokenizer, Predictor.open(out, threads=1)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    return exported("gpt-tiny", tmp_path_factory.mktemp("gpt"))


PROMPTS = ["The government said", "Sideways, a wine-tasting comedy", "Shares in", ""]


def test_prompt_tokens_carry_no_loss():
    """Prompt positions are labelled -100, and the model's loss is the mean NLL of the response tokens alone."""
    import tempfile

    import torch

    from lifecycle.workloads.decoders.model import collator, examples

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = tiny_decoder("gpt-tiny", Path(tmp))
    split = {"prompt": ["The government said"], "response": ["it would cut taxes"]}
    [row] = examples(split, tokenizer, 64, "\n")
    head = len(tokenizer("The government said\n", add_special_tokens=False)["input_ids"])
    assert row["labels"][:head] == [-100] * head
    assert row["labels"][head:] == row["input_ids"][head:] and row["labels"][-1] == tokenizer.eos_token_id
    batch = collator(tokenizer.pad_token_id)([row])
    loss = float(model(**batch).loss.detach())
    logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1].float(), -1).detach()
    ids = batch["input_ids"][0]
    response_nll = -logp[torch.arange(head - 1, len(ids) - 1), ids[head:]].mean()
    all_nll = -logp[torch.arange(len(ids) - 1), ids[1:]].mean()
    assert loss == pytest.approx(float(response_nll), rel=1e-5)
    assert abs(loss - float(all_nll)) > 1e-3  # the prompt would have changed it
    # plain text: every token is a target, in pieces of the context
    pieces = examples({"prompt": [""], "response": [TEXTS[0] * 4]}, tokenizer, 16, None)
    assert len(pieces) > 1 and all(p["labels"] == p["input_ids"] and len(p["input_ids"]) <= 16 for p in pieces)


def test_records_from_several_fields_with_prompts_cut_and_a_lead(tmp_path):
    """pubmedqa-style records: the prompt is the named fields one per line (a list joined by spaces), cut to
    max_prompt_words; the lead baseline's source is kept beside it, whole."""
    from lifecycle.config import build
    from lifecycle.workloads.decoders.model import load_data

    items = {str(i): {"QUESTION": f"Question {i}?", "CONTEXTS": [f"First part {i}. Second", f"part {i}."],
                      "LONG_ANSWER": f"Answer {i}."} for i in range(10)}
    (tmp_path / "qa.json").write_text(json.dumps(items))
    raw = generation_pipeline(prompt_field=["QUESTION", "CONTEXTS"], response_field="LONG_ANSWER",
                              max_prompt_words=5, rouge={"lead_field": "CONTEXTS"})
    raw["data"]["pairs"] = {"format": "pubmedqa", "path": str(tmp_path / "qa.json"), "label_field": None,
                            "split": {"validation": 0.2, "test": 0.2}}
    p = build(raw, base_dir=tmp_path)
    data = load_data(p.data["pairs"], p, p.task.generation_settings, 0)
    assert sorted(len(v["prompt"]) for v in data.splits.values()) == [2, 2, 6]
    i = data.splits["test"]["response"][0].split()[1].rstrip(".")
    test = data.splits["test"]
    assert test["prompt"][0] == f"Question {i}?\nFirst part {i}."  # 5 words
    assert test["lead"][0] == f"First part {i}. Second part {i}."
    from lifecycle import LifecycleError

    for bad in ({"prompt_field": None, "rouge": {}}, {"prompt_field": []}):
        with pytest.raises((LifecycleError, ValueError), match="prompt_field"):
            build(generation_pipeline(**bad), base_dir=tmp_path)


def test_kv_cache_greedy_matches_without_cache_and_pytorch(gpt):
    from lifecycle.workloads.decoders.model import continuations

    model, tokenizer, predictor = gpt
    assert predictor.past and "past_key_values.0.key" in predictor.input_names
    cached = predictor.generate(PROMPTS, max_new_tokens=12)
    uncached = predictor.generate(PROMPTS, max_new_tokens=12, cache=False)
    assert [a["tokens"] for a in cached] == [a["tokens"] for a in uncached]
    assert all(len(a["tokens"]) == 12 or a["finish_reason"] == "eos" for a in cached)
    torch_out = continuations(model, tokenizer, PROMPTS, 12, 64, None)
    onnx_out = predictor.continuations(PROMPTS)
    assert onnx_out.tokens.dtype == np.int64 and onnx_out.logits.shape == (len(PROMPTS), model.config.vocab_size)
    assert (onnx_out.tokens == torch_out.tokens).all()  # generation_agreement 1.0
    assert np.abs(onnx_out.logits - torch_out.logits).max() < 1e-4
    assert [list(r[r >= 0]) for r in onnx_out.tokens] == [a["tokens"] for a in cached]
    # a generator's logits are logits: the next-token scores after each prompt, nothing packed after them
    np.testing.assert_array_equal(predictor.logits(PROMPTS), onnx_out.logits)


def test_parity_of_continuations_counts_a_different_token_as_one():
    """A generator's parity difference: the logits' largest difference, and at least 1.0 when any greedy token
    differs (tokens agree or not; their ids are not numbers to subtract); NaN logits stay NaN."""
    from lifecycle.edge.decoding import Continuations
    from lifecycle.workloads.decoders.generation import difference

    ref = Continuations(np.array([[0.5, 1.0]], np.float32), np.array([[7, 3, -1]]))
    near = Continuations(ref.logits + 1e-6, ref.tokens.copy())
    assert difference(ref, near) == pytest.approx(1e-6, rel=0.05)  # float32 steps
    assert difference(ref, Continuations(near.logits, np.array([[7, 9000, -1]]))) == 1.0
    assert np.isnan(difference(ref, Continuations(np.array([[np.nan, 1.0]], np.float32), np.array([[7, 9, -1]]))))


def test_llama_kv_cache_parity(tmp_path):
    from lifecycle.workloads.decoders.model import continuations

    model, tokenizer, predictor = exported("llama-tiny", tmp_path)
    assert "position_ids" in predictor.input_names and not predictor.shared_cache  # optimum's graph copies its cache
    out = predictor.continuations(PROMPTS[:2])
    ref = continuations(model, tokenizer, PROMPTS[:2], 12, 64, None)
    assert (out.tokens == ref.tokens).all() and np.abs(out.logits - ref.logits).max() < 1e-4
    cached = predictor.generate(PROMPTS[:2], max_new_tokens=8)
    assert cached == predictor.generate(PROMPTS[:2], max_new_tokens=8, cache=False)


def test_onnx_perplexity_equals_pytorch(gpt):
    from lifecycle.workloads.decoders.model import examples, perplexity

    model, tokenizer, predictor = gpt
    split = {"prompt": ["", ""], "response": TEXTS[:2]}
    assert predictor.perplexity(split["prompt"], split["response"]) == pytest.approx(
        perplexity(model, examples(split, tokenizer, 64, None), tokenizer.pad_token_id), rel=1e-4)
    # a prompt that fills the whole context leaves that record nothing to score, in both runtimes
    split = {"prompt": ["the " * 80, "The"], "response": TEXTS[:2]}
    assert predictor.perplexity(split["prompt"], split["response"]) == pytest.approx(
        perplexity(model, examples(split, tokenizer, 64, None), tokenizer.pad_token_id), rel=1e-4)
    assert predictor.perplexity(split["prompt"], split["response"]) == pytest.approx(
        predictor.perplexity(split["prompt"][1:], split["response"][1:]), rel=1e-6)


def test_stop_string_sampling_seed_and_context_limit(gpt):
    from lifecycle.edge import PromptTooLong

    _, _, predictor = gpt
    greedy = predictor.generate(["The government said"], max_new_tokens=12)[0]
    assert greedy["text"]
    stop = greedy["text"][len(greedy["text"]) // 2 :][:2]  # a string the greedy continuation contains
    stopped = predictor.generate(["The government said"], max_new_tokens=12, stop=[stop])[0]
    assert stopped["finish_reason"] == "stop" and stop not in stopped["text"]
    assert greedy["text"].startswith(stopped["text"]) and len(stopped["tokens"]) <= len(greedy["tokens"])

    def sample(seed):
        return predictor.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95, seed=seed)

    assert sample(7) == sample(7)
    assert [a["tokens"] for a in sample(7)] != [a["tokens"] for a in sample(8)]
    for answer in (lambda p: predictor.generate(p, max_new_tokens=4), predictor.logits, predictor.continuations):
        with pytest.raises(PromptTooLong, match="context is 64 tokens"):
            answer([" ".join(TEXTS)])
    near = predictor.tokenizer.decode(predictor.tokenizer.encode(" ".join(TEXTS)).ids[:58])
    n = len(predictor.prompt_ids(near))
    assert len(predictor.generate([near], max_new_tokens=50)[0]["tokens"]) <= 64 - n  # capped at the context
    assert predictor.generate(["The"], max_new_tokens=40, time_budget_s=0.0)[0]["finish_reason"] == "time"


def test_stream_pieces_join_into_the_generated_answer(gpt):
    """Predictor.stream: the same answers as generate(), a token event per token it yields, and text pieces that
    join into the answer, also when a stop string cuts it (the pieces never show the start of a stop string)."""
    _, _, predictor = gpt
    greedy = predictor.generate(PROMPTS[:2], max_new_tokens=12)
    stop = [greedy[0]["text"][len(greedy[0]["text"]) // 2 :][:2]]
    for kwargs in ({}, {"stop": stop}, {"temperature": 1.0, "top_k": 50, "seed": 7}):
        expected = predictor.generate(PROMPTS[:2], max_new_tokens=12, **kwargs)
        events = list(predictor.stream(PROMPTS[:2], max_new_tokens=12, **kwargs))
        assert [e["answer"] for e in events if "answer" in e] == expected
        for i, answer in enumerate(expected):
            pieces = [e for e in events if e["index"] == i and "answer" not in e]
            assert "".join(e["text"] for e in pieces) == answer["text"]
            streamed = [e["token"] for e in pieces if e["token"] is not None]
            assert streamed == answer["tokens"][: len(streamed)] and len(answer["tokens"]) - len(streamed) <= 1
        if "stop" in kwargs:
            assert expected[0]["finish_reason"] == "stop" and not any(stop[0] in e.get("text", "") for e in events)


def generation_pipeline(*stages, **generation) -> dict:
    return {
        "name": "gen", "seed": 0,
        "data": {"news": {"format": "jsonl", "path": str(NEWS), "label_field": None, "split": {"validation": 0.2}},
                 "pairs": {"format": "jsonl", "path": str(PAIRS), "label_field": None,
                           "split": {"validation": 0.15, "test": 0.15}}},
        "task": {"type": "generation", "data": "pairs", "max_length": 48,
                 "generation": {"prompt_field": "prompt", "response_field": "response", "prompts": 6, "new_tokens": 8,
                                **generation}},
        "stages": [{"kind": "pretrain", "data": "news", "block_size": 32,
                    "model": {"preset": "gpt-tiny", "overrides": {"n_positions": 64}, "tokenizer": {"vocab_size": 400}},
                    "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "logging_steps": 10, "save_steps": 30}},
                   *stages],
    }


FINETUNE = {"kind": "finetune", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "collapse_min": None,
            "train": {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "logging_steps": 10, "save_steps": 20},
            "gates": [{"metric": "perplexity_gain", "min": 0.0}, {"metric": "lora_merge_max_abs_diff", "max": 1e-4}]}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """pretrain -> LoRA finetune on response tokens -> export with the KV cache (parity and greedy agreement
    with PyTorch gated) -> dynamic int8 gated on perplexity against the fp32 graph."""
    from lifecycle import pipeline as runner
    from lifecycle.config import build

    tmp = tmp_path_factory.mktemp("pipeline")
    export = {"kind": "export", "latency": {"runs": 3, "warmup": 1, "batch32": False},
              "gates": [{"metric": "generation_agreement", "min": 1.0}]}
    quantize = {"kind": "quantize", "method": "dynamic-int8", "min_speedup": None,
                "latency": {"runs": 3, "warmup": 1, "batch32": False},
                "gates": [{"metric": "perplexity", "max_ratio": 1.1, "vs": "export"}]}
    rouge = {"records": 6, "answer_tokens": 8, "lead_field": "prompt", "lead_sentences": 1}
    p = build(generation_pipeline(FINETUNE, export, quantize, rouge=rouge), base_dir=tmp)
    return runner.run(p, workdir=tmp, echo=lambda *a: None)


def test_pipeline_finetune_lora_export_int8(pipeline_run):
    from lifecycle.edge import Predictor

    ft, ex, q = (o.artifact for o in pipeline_run[1:])
    assert ft.manifest["details"]["loss_on"] == "response tokens"
    m = ft.metrics  # ROUGE-L of 6 test answers before and after, and the prompts' first sentence as answers
    assert all(0 <= m[k] <= 1 for k in ("rouge_l", "rouge_l_before", "baseline_lead_rouge_l"))
    assert m["rouge_l_gain"] == pytest.approx(m["rouge_l"] - m["rouge_l_before"])
    [example, *_] = ft.manifest["details"]["rouge_examples"]
    assert {"prompt", "reference", "before", "after", "lead"} <= set(example) and example["reference"]
    assert ft.metrics["perplexity"] < ft.metrics["perplexity_before"] and ft.metrics["trainable_fraction"] < 0.5
    assert ex.metrics["generation_agreement"] == 1.0 and ex.metrics["parity_max_abs_diff"] < 1e-4
    assert ex.metrics["perplexity"] == pytest.approx(ft.metrics["perplexity"], rel=1e-3)  # ONNX = PyTorch
    assert "generation_agreement" in q.metrics and q.metrics["perplexity"] <= 1.1 * ex.metrics["perplexity"]
    # the graph's greedy answers to the same 6 test records: the fp32 export answers as PyTorch did
    assert ex.metrics["rouge_l"] == pytest.approx(m["rouge_l"]) and 0 <= q.metrics["rouge_l"] <= 1
    assert "val_rouge_l" in q.metrics  # the ladder chooses on validation
    assert ex.metrics["ort_ms_per_token"] > 0 and ex.metrics["ort_tokens_per_s"] == pytest.approx(
        1000 / ex.metrics["ort_ms_per_token"])
    predictor = Predictor.open(q.path)
    assert predictor.route == "/generate" and predictor.check() == 6
    assert all(g["passed"] for o in pipeline_run for g in o.artifact.manifest["gates"])


@pytest.fixture(scope="module")
def generator_server(pipeline_run, tmp_path_factory):
    """A real `bentoml serve` of the int8 generator (max_new_tokens capped at 6), with an httpx client."""
    import httpx

    from lifecycle import serving

    tmp = tmp_path_factory.mktemp("serve")
    q = pipeline_run[-1].artifact
    settings = serving.ServingSettings(max_new_tokens=6, generate_time_budget_s=5.0)
    cfg = serving.write_config(serving.resolve(q.path), settings, tmp / "serving.json")
    with serving.Server(cfg, log=tmp / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def assert_healthy(c):
    assert c.get("/livez").status_code == 200
    assert c.post("/generate", json={"prompts": ["The"], "max_new_tokens": 2}).status_code == 200


def test_generate_route_limits_and_refusals(pipeline_run, generator_server):
    """POST /generate: greedy answers equal the edge runtime's, max_new_tokens capped, seeded sampling
    reproducible over HTTP, a prompt over the context refused with 413 naming the limit, bad options 422,
    a spent time budget stops cleanly; the server answers /livez and /generate after every refusal."""
    from lifecycle.edge import Predictor

    c = generator_server
    local = Predictor.open(pipeline_run[-1].artifact.path)
    prompts = ["The government said", "Shares in"]
    r = c.post("/generate", json={"prompts": prompts, "max_new_tokens": 500})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert answers == local.generate(prompts, max_new_tokens=6)  # capped at the server's 6
    assert all(len(a["tokens"]) <= 6 for a in answers)
    sampled = {"prompts": prompts, "temperature": 1.0, "top_k": 20, "seed": 3, "max_new_tokens": 6}
    assert c.post("/generate", json=sampled).json() == c.post("/generate", json=sampled).json()
    long = c.post("/generate", json={"prompts": ["ok", " ".join(TEXTS[:20])]})
    assert long.status_code == 413 and '"prompts"[1]' in long.json()["error"]
    assert "context is 48 tokens" in long.json()["error"]
    assert_healthy(c)
    for bad in ({"texts": ["x"]}, {"prompts": []}, {"prompts": [1]}, {"prompts": ["x"], "top_p": 0},
                {"prompts": ["x"], "max_new_tokens": True}, {"prompts": ["x"], "stop": "x"},
                {"prompts": ["x"], "stream": 1}, {"prompts": ["x"], "time_budget_s": 0}):
        r = c.post("/generate", json=bad)
        assert r.status_code == 422 and "error" in r.json(), bad
    assert_healthy(c)
    assert c.post("/classify", json={"texts": ["x"]}).status_code == 404


def server_sent_events(c, payload: dict, headers: dict | None = None) -> tuple[str, list[tuple[str, dict]]]:
    """(content type, [(event, data), ...]) of a streamed POST /generate, read as the events arrive."""
    events = []
    with c.stream("POST", "/generate", json=payload, headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
        return r.headers["content-type"], events


def test_generate_streams_server_sent_events(pipeline_run, generator_server):
    """{"stream": true} (or Accept: text/event-stream) answers with server-sent events: a `token` event per new
    token whose text pieces join into the answer, an `answer` event per prompt equal to the unstreamed answer,
    then `done`; a spent time budget ends the stream cleanly (finish_reason "time") and the server stays live."""
    c = generator_server
    prompts = ["The government said", "Shares in"]
    plain = c.post("/generate", json={"prompts": prompts, "max_new_tokens": 6, "stop": ["zz"]}).json()
    media, events = server_sent_events(c, {"prompts": prompts, "max_new_tokens": 6, "stop": ["zz"], "stream": True})
    assert media.startswith("text/event-stream")
    assert [k for k, _ in events][-1] == "done" and [k for k, _ in events].count("answer") == len(prompts)
    for i, expected in enumerate(plain):
        tokens = [d for k, d in events if k == "token" and d["index"] == i]
        [answer] = [d["answer"] for k, d in events if k == "answer" and d["index"] == i]
        assert answer == expected
        assert "".join(d["text"] for d in tokens) == answer["text"]
        streamed = [d["token"] for d in tokens if d["token"] is not None]
        assert streamed == answer["tokens"][: len(streamed)] and len(answer["tokens"]) - len(streamed) <= 1
    # the header asks for a stream; "stream": false overrides it
    assert server_sent_events(c, {"prompts": prompts[:1], "max_new_tokens": 6},
                              {"accept": "text/event-stream"})[1][-2][1]["answer"] == plain[0]
    r = c.post("/generate", json={"prompts": prompts[:1], "max_new_tokens": 6, "stream": False},
               headers={"accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("application/json") and r.json() == plain[:1]
    # a budget spent after the first token: one token, then the answer says why it stopped
    _, events = server_sent_events(c, {"prompts": prompts[:1], "max_new_tokens": 6, "stream": True,
                                       "time_budget_s": 1e-9})
    assert [k for k, _ in events] == ["token", "answer", "done"]
    assert events[1][1]["answer"]["finish_reason"] == "time" and len(events[1][1]["answer"]["tokens"]) == 1
    assert c.post("/generate_stream", json={"prompts": ["x"]}).status_code == 404  # only through /generate
    assert_healthy(c)


@pytest.mark.slow
def test_brown_generation_pipeline_passes_every_gate(tmp_path):
    """pipelines/brown_generation.yaml as shipped (about 8 minutes on 2 cores; needs ../shared/data)."""
    from lifecycle import pipeline as runner
    from lifecycle.config import load

    path = Path(__file__).resolve().parents[1] / "pipelines" / "brown_generation.yaml"
    outcomes = runner.run(load(path), workdir=tmp_path, echo=lambda *a: None)
    assert [o.artifact.manifest["stage"] for o in outcomes] == ["pretrain", "adapt", "distill", "export", "quantize",
                                                                  "serve"]
    assert all(g["passed"] or g.get("verdict") == "warn" for o in outcomes for g in o.artifact.manifest["gates"])
    distill = outcomes[2].artifact
    assert distill.manifest["details"]["student_layers"] == [0, 3]
    assert outcomes[3].artifact.metrics["perplexity"] == pytest.approx(distill.metrics["perplexity"], rel=1e-3)


@pytest.mark.slow
def test_pubmedqa_generation_pipeline_passes_every_gate(tmp_path):
    """pipelines/pubmedqa_generation.yaml as shipped (about 6 minutes on 2 cores; needs ../shared/data): fine-tuning
    raises ROUGE-L, the lead baseline is reported beside it, and the exported and int8 graphs answer as well."""
    from lifecycle import pipeline as runner
    from lifecycle.config import load

    path = Path(__file__).resolve().parents[1] / "pipelines" / "pubmedqa_generation.yaml"
    outcomes = runner.run(load(path), workdir=tmp_path, echo=lambda *a: None)
    assert all(g["passed"] for o in outcomes for g in o.artifact.manifest["gates"])
    m = {o.name: o.artifact.metrics for o in outcomes}
    assert m["finetune"]["rouge_l"] > m["finetune"]["rouge_l_before"] and 0 < m["finetune"]["baseline_lead_rouge_l"] < 1
    assert m["export"]["rouge_l"] == pytest.approx(m["finetune"]["rouge_l"])


EDGE_SCRIPT = """
import json, sys
from lifecycle.edge import Predictor
p = Predictor.open(sys.argv[1])
out = p.generate(["The government said"], max_new_tokens=5, temperature=0.8, top_p=0.9, seed=1, stop=["zzz"])
p.check()  # re-runs the greedy generations the pipeline recorded
third = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
               - {"__main__", "_distutils_hack"} - {m for m in sys.modules if m.startswith("__editable__")}
               - {m for m in sys.modules if m == "cython_runtime" or m.startswith("_cython_")})  # numpy.random's
print(json.dumps({"third_party": third, "answer": out}))
"""


def test_edge_generator_needs_no_torch(pipeline_run):
    """The int8 generator runs (KV cache, sampling, check()) in a fresh interpreter that imports nothing but
    numpy, onnxruntime and tokenizers; its seeded sample equals this process's."""
    import subprocess
    import sys

    from lifecycle.edge import Predictor

    q = pipeline_run[-1].artifact
    out = subprocess.run([sys.executable, "-c", EDGE_SCRIPT, str(q.path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(got["third_party"]) <= {"numpy", "onnxruntime", "tokenizers", "lifecycle"}, got
    here = Predictor.open(q.path).generate(["The government said"], max_new_tokens=5, temperature=0.8, top_p=0.9,
                                           seed=1, stop=["zzz"])
    assert got["answer"] == here


def test_int4_weight_only_decoder_keeps_the_kv_cache(tmp_path):
    """int4 MatMulNBits (weight-only, block 32) on a Llama decoder (its projections are MatMul; GPT-2's Conv1D
    exports as Gemm, which MatMulNBits does not take): the cache still reproduces the uncached greedy tokens,
    and held-out perplexity stays within 10% of fp32 (random tiny weights: a loose bound)."""
    import onnx

    from lifecycle.components.quantization import Settings, build, default_opset
    from lifecycle.edge import Predictor, op_types

    # the export stage's default opset (17), where RMSNorm's ReduceMean takes its axes as an attribute: the
    # int4 graph is at opset 21, where they are an input, and still loads
    _, _, fp32 = exported("llama-tiny", tmp_path)
    assert "ReduceMean" in op_types(fp32.root / "model.onnx")
    build(Settings(method="int4"), fp32.root, tmp_path / "int4", work=tmp_path / "work")
    assert "MatMulNBits" in op_types(tmp_path / "int4" / "model.onnx")
    assert default_opset(onnx.load(str(tmp_path / "int4" / "model.onnx"))) == 21
    int4 = Predictor.open(tmp_path / "int4", threads=1)
    assert int4.generate(PROMPTS, max_new_tokens=8) == int4.generate(PROMPTS, max_new_tokens=8, cache=False)
    texts = ["", ""], TEXTS[:2]
    assert int4.perplexity(*texts) <= 1.1 * fp32.perplexity(*texts)


def test_a_llama_decoder_exported_through_onnxruntime_genai_is_gated_quantized_and_decoded(tmp_path):
    """`exporter: genai`: onnxruntime-genai's model builder writes the pretrained Llama decoder as its fused graph
    (GroupQueryAttention over the KV cache); export gates it on parity and greedy agreement with PyTorch like any
    export, quantize takes it (dynamic int8 in the pipeline, block-int8 beside it), and lifecycle.edge decodes
    each with the cache as without it."""
    from lifecycle import config
    from lifecycle import pipeline as runner
    from lifecycle.components.quantization import Settings, build
    from lifecycle.edge import Predictor, op_types

    export = {"kind": "export", "exporter": "genai", "latency": {"runs": 3, "warmup": 1, "batch32": False},
              "gates": [{"metric": "generation_agreement", "min": 1.0}]}
    quantize = {"kind": "quantize", "method": "dynamic-int8", "min_speedup": None,
                "latency": {"runs": 3, "warmup": 1, "batch32": False},
                "gates": [{"metric": "perplexity", "max_ratio": 1.1, "vs": "export"}]}
    raw = generation_pipeline(export, quantize)
    raw["stages"][0]["model"] = {"preset": "llama-tiny", "overrides": {"max_position_embeddings": 64},
                                 "tokenizer": {"vocab_size": 400}}
    raw["stages"][0]["train"]["max_steps"] = 10
    pre, ex, q = (o.artifact for o in runner.run(config.build(raw, base_dir=tmp_path), workdir=tmp_path, echo=lambda *a: None))
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= op_types(ex.path / "model.onnx")
    assert ex.manifest["details"]["graph_optimization"]["fused_operators"]["GroupQueryAttention"] == 2  # 2 layers
    assert ex.metrics["parity_max_abs_diff"] < 1e-4 and ex.metrics["generation_agreement"] == 1.0
    assert "MatMulInteger" in op_types(q.path / "model.onnx") and q.metrics["perplexity"] <= 1.1 * ex.metrics["perplexity"]
    assert all(g["passed"] for a in (ex, q) for g in a.manifest["gates"])
    # block-int8: MatMulNBits at 8 bits, onnxruntime-genai's own int8, of the same graph
    build(Settings(method="block-int8"), ex.path, tmp_path / "block-int8")
    assert "MatMulNBits" in op_types(tmp_path / "block-int8" / "model.onnx")
    block = Predictor.open(tmp_path / "block-int8", threads=1)
    texts = [""] * 4, TEXTS[:4]
    assert block.perplexity(*texts) <= 1.02 * Predictor.open(ex.path, threads=1).perplexity(*texts)
    for predictor in (Predictor.open(ex.path, threads=1), Predictor.open(q.path, threads=1), block):
        # the cache read and written in place (SharedCache) reproduces the uncached tokens
        assert predictor.shared_cache
        assert predictor.generate(PROMPTS, max_new_tokens=8) == predictor.generate(PROMPTS, max_new_tokens=8, cache=False)


def test_onnxruntime_genai_refuses_gpt2_by_name(gpt, tmp_path):
    """Its builder takes the Llama family, not GPT-2: the export says so and what to use instead."""
    from lifecycle import LifecycleError
    from lifecycle.components.onnx import export_genai

    model, tokenizer, _ = gpt
    with pytest.raises(LifecycleError, match=r"cannot build GPT2LMHeadModel \(it builds the Llama family.*`exporter: torch`"):
        export_genai(model, tokenizer, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_a_tied_lm_head_is_quantized_with_the_other_projections(gpt, tmp_path):
    """torch.onnx writes GPT-2's tied head as MatMul(hidden, Transpose(wte)); the quantizers take only
    initializer weights, so the head (hidden x vocabulary, the largest matrix of a small decoder) stayed fp32
    until the constant transpose was folded before quantizing. The lookups keep the float table."""
    import onnx

    from lifecycle.components.quantization import Settings, build
    from lifecycle.edge import Predictor

    fp32 = gpt[2]
    head = [n for n in onnx.load(str(fp32.root / "model.onnx")).graph.node if n.name == "/lm_head/MatMul"]
    assert head and head[0].input[1].endswith("_transposed")  # what torch.onnx writes for a tied head
    for method in ("dynamic-int8", "int4"):
        build(Settings(method=method, exclude_op_types=["Gather"]), fp32.root, tmp_path / method)
        nodes = onnx.load(str(tmp_path / method / "model.onnx")).graph.node
        assert not [n for n in nodes if n.op_type in ("MatMul", "Transpose") and n.name.startswith("/lm_head/")]
        assert [n for n in nodes if n.op_type in ("MatMulInteger", "MatMulNBits") and n.name.startswith("/lm_head/")]
        assert not (tmp_path / method / "weights-folded.onnx").exists()  # the folded copy was scratch
        quantized = Predictor.open(tmp_path / method, threads=1)
        assert quantized.generate(PROMPTS, max_new_tokens=8) == quantized.generate(PROMPTS, max_new_tokens=8, cache=False)
        texts = ["", ""], TEXTS[:2]
        assert quantized.perplexity(*texts) <= 1.1 * fp32.perplexity(*texts)
