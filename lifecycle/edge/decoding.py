"""Generation with a decoder graph that has a KV cache (task generation): greedy decoding and sampling
(temperature, top-k, top-p), stop strings, streaming, a time budget, decoding speed and perplexity.

These are Predictor's generation methods: each takes the predictor as `self` and Predictor binds them
(`Predictor.generate = decoding.generate`...), so `p.generate(...)` reads as it always did while this job
lives in its own module. They use the predictor's session, tokenizer, `generation` settings (schema.json),
`max_length`, input/output names and `past` (the cache inputs: name, shape, type).

One prompt at a time: no padding, so a prompt's tokens do not depend on what it is sent with, and a
graph with run-time activation scales (dynamic int8) sees exactly what it saw when it was gated.
PromptInputs is the inputs kind "prompts"."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from .text_inputs import TextInputs


class PromptTooLong(ValueError):
    """A prompt with no room to generate in the model's context."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"the prompt has {tokens} tokens; the model's context is {limit} tokens (prompt and "
                         f"generated tokens together), so a prompt may have at most {limit - 1}")
        self.tokens, self.limit = tokens, limit


class PromptInputs(TextInputs):
    """Inputs kind "prompts": texts to continue. A prompt over the context is refused (PromptTooLong), never
    cut silently; a prompt's output is the next-token logits after it (a generator's answer is its tokens:
    generate(), and continuations() for what fidelity compares)."""

    def __init__(self, root, schema: dict):
        super().__init__(root, schema)
        self.tokenizer.no_truncation()

    def outputs(self, predictor, prompts: list, batch_size: int) -> np.ndarray:
        rows = [predictor._step(predictor._fits(predictor.prompt_ids(p)), None, None)[0] for p in prompts]
        return np.stack(rows) if rows else np.zeros((0, _vocab(predictor)), dtype=np.float32)


class Continuations(NamedTuple):
    """What a generator's fidelity compares, per prompt (the edge runtime's and PyTorch's alike): the
    next-token logits after it and its first greedy tokens with the KV cache."""

    logits: np.ndarray  # (prompts, vocab), float32
    tokens: np.ndarray  # (prompts, new tokens), int64; -1 after the end-of-text token

    @classmethod
    def of(cls, rows: list[tuple[np.ndarray, list[int]]], new_tokens: int, vocab: int) -> Continuations:
        """From (next-token logits, greedy tokens) per prompt."""
        tokens = np.full((len(rows), new_tokens), -1, dtype=np.int64)
        for i, (_, greedy) in enumerate(rows):
            tokens[i, : len(greedy)] = greedy
        logits = np.stack([r[0] for r in rows]).astype(np.float32) if rows else np.zeros((0, vocab), np.float32)
        return cls(logits, tokens)


def _vocab(predictor) -> int:
    return predictor.schema["outputs"]["logits"]["shape"][-1]


def prompt_ids(self, prompt: str) -> list[int]:
    """A prompt's token ids as the model was trained to read them (the separator appended after a
    prompt/response model's prompt); an empty prompt starts from the end-of-text token, as GPT-2 does."""
    separator = self.generation.get("separator")
    text = prompt + separator if separator is not None and prompt else prompt
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
    return ids or [self.generation["eos_token_id"]]


def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((batch, shape[1], 0, shape[3]), dtype=np.float16 if "float16" in kind else np.float32)
            for name, shape, kind in self.past}


def _fits(self, ids: list[int]) -> list[int]:
    """`ids`, a prompt's tokens, when they leave room for at least one new token in the context."""
    if len(ids) >= self.max_length:
        raise PromptTooLong(len(ids), self.max_length)
    return ids


class SharedCache:
    """The KV cache of a decoder whose GroupQueryAttention reads its past and writes its present in one buffer
    (onnxruntime-genai's model builder writes such graphs: lifecycle.components.onnx.export_genai): one buffer
    per layer's keys and values, as long as the context, bound as both input and output, so a step writes its
    token's keys and values in place instead of the graph copying the whole cache into a new present. A step
    binds its tokens, the attention mask (its length tells the graph how much of the buffer holds tokens) and
    the logits by address (onnxruntime's IOBinding, no copies); what a token costs beyond the graph's kernels
    is a few bindings."""

    def __init__(self, predictor):
        self.io = predictor.session.io_binding()
        self.buffers = []
        for name, shape, kind in predictor.past:
            buf = np.zeros((1, shape[1], predictor.max_length, shape[3]), np.float16 if "float16" in kind else np.float32)
            self.buffers.append(buf)  # kept alive with the binding that points at it
            self._bind(name, buf, output=False)
            self._bind(name.replace("past_key_values", "present", 1), buf, output=True)
        self.mask = np.ones((1, predictor.max_length), dtype=np.int64)

    def _bind(self, name: str, array: np.ndarray, output: bool, shape=None) -> None:
        bind = self.io.bind_output if output else self.io.bind_input
        bind(name, "cpu", 0, array.dtype, list(shape or array.shape), array.ctypes.data)

    def step(self, predictor, ids: list[int], total: int) -> np.ndarray:
        """Run `ids`, the last tokens of a sequence of `total`: the logits after the last of them."""
        tokens = np.array([ids], dtype=np.int64)
        logits = np.empty((1, len(ids), _vocab(predictor)), dtype=np.float32)
        self._bind("input_ids", tokens, output=False)
        self._bind("attention_mask", self.mask, output=False, shape=(1, total))
        self._bind("logits", logits, output=True)
        predictor.session.run_with_iobinding(self.io)
        return logits[0, -1]


def _step(self, ids: list[int], past: dict | SharedCache | None, total: int | None) -> tuple[np.ndarray, dict | SharedCache]:
    """Run `ids`, the last len(ids) tokens of a sequence of `total` (None: len(ids)), on the cache `past`
    (None: empty): (the logits after the last of them, the cache after them)."""
    n = len(ids)
    total = n if total is None else total
    if self.shared_cache:
        cache = past or SharedCache(self)
        return cache.step(self, ids, total), cache
    feeds = {"input_ids": np.array([ids], dtype=np.int64), **(past if past is not None else self._empty_past(1))}
    if "attention_mask" in self.input_names:
        feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
    if "position_ids" in self.input_names:
        feeds["position_ids"] = np.arange(total - n, total, dtype=np.int64)[None]
    named = dict(zip(self.output_names, self.session.run(None, feeds)))
    present = {k.replace("present", "past_key_values", 1): v for k, v in named.items() if k.startswith("present")}
    return named["logits"][0, -1].astype(np.float32), present


def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
             time_budget_s: float | None = None, cache: bool = True) -> list[dict]:
    """{"text", "tokens", "finish_reason"} per prompt: the continuation (text and new token ids).
    temperature 0: greedy; otherwise sampling from softmax(logits / temperature), restricted to the
    top_k tokens (0: all) and to the smallest set whose probability reaches top_p; `seed` makes it
    reproducible (one generator for the call, prompts in order). Generation ends at the end-of-text
    token ("eos"), at the first of the `stop` strings (cut before it: "stop"), after max_new_tokens or
    at the context ("length"), or when `time_budget_s` (for the whole call) is spent ("time": what was
    generated so far is returned). `cache` False recomputes the whole sequence at every step (what the
    KV cache must reproduce). A prompt of max_length tokens or more raises PromptTooLong."""
    self._only_for("generate")
    rng = np.random.default_rng(seed)
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    return [self._continue(self.prompt_ids(p), max_new_tokens, temperature, top_k, top_p, rng, stop or [],
                           deadline, cache)[0] for p in prompts]


def stream(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
           time_budget_s: float | None = None):
    """generate(), one event at a time: {"index", "token", "text"} per new token ("text": what the token adds
    to the answer; "token" None for a last piece of text held back until the end) and {"index", "answer"}
    when a prompt's answer is complete (the dict generate() returns for it). The "text" pieces of a prompt
    join into its answer's text: text that could still turn into a stop string, or an incomplete UTF-8
    character (decoded as U+FFFD), is held back until the next token settles it. Lazy: a consumer that
    stops iterating stops the decoding."""
    self._only_for("generate")
    rng = np.random.default_rng(seed)
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    stop = stop or []
    for index, prompt in enumerate(prompts):
        steps, sent = self._decode(self.prompt_ids(prompt), max_new_tokens, temperature, top_k, top_p, rng, stop,
                                   deadline, True), ""
        while True:
            try:
                token, text = next(steps)
            except StopIteration as done:
                answer = done.value[0]
                break
            settled = _settled(text, stop)
            piece = settled[len(sent):] if settled.startswith(sent) else ""
            sent += piece
            yield {"index": index, "token": token, "text": piece}
        if answer["text"].startswith(sent) and len(answer["text"]) > len(sent):
            yield {"index": index, "token": None, "text": answer["text"][len(sent):]}
        yield {"index": index, "answer": answer}


def _continue(self, ids, max_new_tokens, temperature, top_k, top_p, rng, stop, deadline, cache):
    """(the answer, the first next-token logits): _decode run to its end."""
    steps = self._decode(ids, max_new_tokens, temperature, top_k, top_p, rng, stop, deadline, cache)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _decode(self, ids, max_new_tokens, temperature, top_k, top_p, rng, stop, deadline, cache):
    """Yields (token, answer text so far) per new token that does not end the answer; returns (the answer,
    the first next-token logits)."""
    self._fits(ids)
    eos = self.generation["eos_token_id"]
    budget = min(max_new_tokens, self.max_length - len(ids))
    logits, past = self._step(ids, None, len(ids))
    first, tokens, finish, text = logits, [], "length", ""
    while len(tokens) < budget:
        token = _pick(logits, temperature, top_k, top_p, rng)
        tokens.append(token)
        if token == eos:
            finish = "eos"
            break
        text = self.tokenizer.decode([t for t in tokens if t != eos])
        cut = min((text.find(s) for s in stop if s and s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            break
        yield token, text
        if deadline is not None and time.monotonic() > deadline:
            finish = "time"
            break
        if len(tokens) == budget:
            break
        total = len(ids) + len(tokens)
        logits, past = self._step([token], past, total) if cache else self._step(ids + tokens, None, total)
    return {"text": text, "tokens": tokens, "finish_reason": finish}, first


def decoding_speed(self, prompt: str, new_tokens: int = 16, repeats: int = 3) -> dict:
    """Greedy decoding of `prompt` at batch 1 with the KV cache, timed: the median over `repeats` of the
    time to first token (the prompt's pass) and of the median milliseconds per later token."""
    ids = self.prompt_ids(prompt)[: self.max_length // 2]
    steps = max(1, min(new_tokens, self.max_length - len(ids) - 1))
    firsts, per_token = [], []
    for _ in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        logits, past = self._step(ids, None, len(ids))
        firsts.append(time.perf_counter() - started)
        times = []
        for k in range(steps):
            started = time.perf_counter()
            logits, past = self._step([int(np.argmax(logits))], past, len(ids) + k + 1)
            times.append(time.perf_counter() - started)
        per_token.append(float(np.median(times)))
    first, each = float(np.median(firsts[1:])) * 1000, float(np.median(per_token[1:])) * 1000
    return {"time_to_first_token_ms": first, "ms_per_token": each, "tokens_per_s": 1000 / each}


def continuations(self, prompts: list[str]) -> Continuations:
    """Per prompt, the next-token logits after it and its first `agreement_tokens` greedy tokens with the
    KV cache, in one pass: what export's parity and the quantize ladder compare with PyTorch / the fp32
    graph (lifecycle.workloads.decoders.generation)."""
    n = self.generation["agreement_tokens"]
    rows = []
    for p in prompts:
        answer, first = self._continue(self.prompt_ids(p), n, 0.0, 0, 1.0, None, [], None, True)
        rows.append((first, answer["tokens"]))
    return Continuations.of(rows, n, _vocab(self))


def perplexity(self, prompts: list[str], responses: list[str]) -> float:
    """exp(mean NLL) of the responses' tokens (and end-of-text) after their prompts, as the generation
    task's training loss counts them; plain text (empty prompts) in max_length pieces, every token."""
    eos, nll, count = self.generation["eos_token_id"], 0.0, 0
    for prompt, response in zip(prompts, responses):
        head = self.prompt_ids(prompt) if prompt else []
        tail = self.tokenizer.encode(response, add_special_tokens=False).ids + [eos]
        pieces = [(head + tail)[: self.max_length]] if head else \
            [tail[i : i + self.max_length] for i in range(0, len(tail), self.max_length)]
        for ids in pieces:
            if len(ids) < 2:
                continue
            feeds = self._feeds([_Ids(ids)])
            logits = self.session.run(["logits"], feeds)[0][0, :-1].astype(np.float64)
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            start = max(len(head), 1) - 1  # position t-1 predicts token t; targets start after the prompt
            # none when the prompt fills the context: that record has nothing to score
            targets = np.array(ids[start + 1 :], dtype=np.int64)
            nll -= float(logp[np.arange(start, len(ids) - 1), targets].sum())
            count += len(targets)
    return float(np.exp(nll / count)) if count else float("nan")


class _Ids:
    """Token ids shaped like a tokenizers Encoding, for Predictor._feeds."""

    def __init__(self, ids: list[int]):
        self.ids, self.attention_mask, self.type_ids = ids, [1] * len(ids), [0] * len(ids)


def _settled(text: str, stop: list[str]) -> str:
    """`text` without what a later token may still change: a trailing incomplete UTF-8 character (U+FFFD) and
    the longest ending that begins one of the `stop` strings."""
    text = text.rstrip("\ufffd")
    held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - held]


def _pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    """The next token: argmax at temperature 0, else a draw from the temperature-scaled, top-k / top-p
    truncated softmax."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < len(z):
        z[z < np.sort(z)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # probability of the tokens ranked above each
        p[order[before >= top_p]] = 0.0
        p /= p.sum()
    return int(rng.choice(len(p), p=p))
