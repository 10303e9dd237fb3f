"""A text's answer does not depend on what it is batched with: alone, among long texts, among short
texts, in any order and at any batch size, for fp32, static int8 and dynamic int8 graphs (the tiny
export quantized by the quantize stage), in-process and through a real `bentoml serve`. Plus the serve
stage's agreement rule (score tolerance, near ties)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_export import run_tiny, shared_workdir, tiny_pipeline

from lifecycle import data as datalib
from lifecycle import serving
from lifecycle.edge import BATCH_DEPENDENT_OPS, Predictor, op_types
from lifecycle.stages.serve import one_path_agreement
from lifecycle.workloads.text.classification import TASK as CLASSIFICATION

TEXT = "the striker scored twice in the final"
SHORT = ["rain", "shares fell", "a new album", "the minister resigned today", "profits rose sharply"]
QUANTIZE = {"kind": "quantize", "parent": "export", "latency": {"runs": 3, "warmup": 1}, "min_speedup": None}
GRAPHS = {"fp32": "export", "static-int8": "q-static", "dynamic-int8": "q-dynamic"}


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def graphs(onnx_workdir) -> dict:
    """graph kind -> artifact directory: the shared tiny export and its two int8 quantizations."""
    run = run_tiny(onnx_workdir, {**QUANTIZE, "name": "q-static", "method": "static-int8",
                                  "calibration": {"samples": 16}},
                   {**QUANTIZE, "name": "q-dynamic", "method": "dynamic-int8"})
    return {kind: run / stage for kind, stage in GRAPHS.items()}


@pytest.fixture(scope="module")
def long_texts() -> list[str]:
    """News articles from the test split: longer than max_length, all cut to it."""
    pipe = tiny_pipeline()
    test = datalib.load(pipe.data["news"], pipe).splits["test"]
    return sorted(test["text"], key=len)[-12:]


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_a_text_gets_one_answer_whatever_it_is_batched_with(graphs, long_texts, kind):
    p = Predictor.open(graphs[kind])
    lengths = p.token_counts([TEXT, *SHORT])
    assert len(set(lengths)) > 2 and max(lengths[1:]) < lengths[0] < p.max_length  # shorter, mixed lengths
    assert min(p.token_counts(long_texts)) > p.max_length
    assert p.batch_dependent == (kind == "dynamic-int8")  # found by scanning the graph's ops

    alone = p.logits([TEXT])[0]
    with_long = p.logits([*long_texts[:6], TEXT, *long_texts[6:]])
    with_short = p.logits([*SHORT, TEXT])
    # bit-identical, not merely close: nothing in the batch reaches the text's row
    np.testing.assert_array_equal(with_long[6], alone)
    np.testing.assert_array_equal(with_short[-1], alone)
    assert p.predict([TEXT]) == [p.predict([*SHORT, TEXT])[-1]] == [p.predict([*long_texts, TEXT])[-1]]

    # any order, any batch size: each row equals the text run alone
    texts = [*long_texts, *SHORT, TEXT]
    singles = np.concatenate([p.logits([t]) for t in texts])
    shuffled = list(range(len(texts)))
    random.Random(0).shuffle(shuffled)
    for batch_size in (1, 3, 64):
        np.testing.assert_array_equal(p.logits(texts, batch_size=batch_size), singles)
        np.testing.assert_array_equal(p.logits([texts[i] for i in shuffled], batch_size=batch_size),
                                      singles[shuffled])
    assert p.logits([]).shape == (0, len(p.labels))


def test_dynamic_int8_batched_together_would_differ(graphs, long_texts):
    """Why the dynamic graph gets one text per call: one padded session call over the same texts
    (run-time activation scales shared by the batch) moves the text's logits."""
    p = Predictor.open(graphs["dynamic-int8"])
    assert {"DynamicQuantizeLinear"} <= op_types(graphs["dynamic-int8"] / "model.onnx")
    together = p.session.run(None, p.encode([*long_texts, TEXT]))[0][-1]
    assert np.abs(together - p.logits([TEXT])[0]).max() > 1e-4


def test_op_scan_agrees_with_onnx(graphs):
    import onnx

    for kind, path in graphs.items():
        expected = {n.op_type for n in onnx.load(str(path / "model.onnx")).graph.node}
        assert op_types(path / "model.onnx") == expected, kind
        assert bool(expected & BATCH_DEPENDENT_OPS) == (kind == "dynamic-int8")


def test_served_answer_alone_equals_inside_a_multi_text_request(graphs, long_texts, tmp_path):
    """A real `bentoml serve` on the dynamic int8 graph (the batch-dependent kind): one text alone
    (inferred on the event loop) and inside multi-text requests (in a thread) gives the same JSON,
    and the same answer as in-process."""
    import httpx

    cfg = serving.write_config(serving.resolve(graphs["dynamic-int8"]), serving.ServingSettings(),
                               tmp_path / "serving.json")
    with serving.Server(cfg, log=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        def ask(texts):
            r = client.post("/classify", json={"texts": texts})
            assert r.status_code == 200, r.text
            return r.json()

        alone = ask([TEXT])[0]
        assert ask([*long_texts[:6], TEXT, *long_texts[6:]])[6] == alone
        assert ask([*SHORT, TEXT])[-1] == alone
    local = Predictor.open(graphs["dynamic-int8"]).predict([TEXT])[0]
    assert alone["label"] == local["label"]
    assert alone["scores"] == pytest.approx(local["scores"], abs=1e-6)


def _answer(scores: dict[str, float]) -> dict:
    label = max(scores, key=scores.get)
    return {"label": label, "score": scores[label], "scores": scores}


def test_serve_agreement_counts_a_flip_only_beyond_the_tolerance():
    tol = 1e-5
    clear = _answer({"a": 0.7, "b": 0.3})
    mismatches = lambda got, local: one_path_agreement(CLASSIFICATION, [got], [local], tol)["prediction_mismatches"]  # noqa: E731
    # a near tie (in-process margin 4e-6 <= tol) that flips, scores within 3e-6: not a mismatch
    tie = _answer({"a": 0.5 + 2e-6, "b": 0.5 - 2e-6})
    flipped = _answer({"a": 0.5 - 1e-6, "b": 0.5 + 1e-6})
    assert one_path_agreement(CLASSIFICATION, [flipped], [tie], tol) == {"prediction_mismatches": 0,
                                                          "score_max_abs_diff": pytest.approx(3e-6)}
    # margin 1.2e-5 > tol: the same flip with scores still within tol is a mismatch
    assert mismatches(flipped, _answer({"a": 0.5 + 6e-6, "b": 0.5 - 6e-6})) == 1
    # same label: a mismatch exactly when a score moves by more than tol
    assert mismatches(_answer({"a": 0.7 + 2e-5, "b": 0.3 - 2e-5}), clear) == 1
    assert mismatches(_answer({"a": 0.7 + 5e-6, "b": 0.3 - 5e-6}), clear) == 0
    assert mismatches(_answer({"a": 0.3, "b": 0.7}), clear) == 1
    assert one_path_agreement(CLASSIFICATION, [None, clear], [clear, clear], tol) == {"prediction_mismatches": 1,
                                                                      "score_max_abs_diff": 0.0}
