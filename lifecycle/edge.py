"""The small runtime shared by the edge bundle, the BentoML service and the export/quantize/serve
stages: onnxruntime + tokenizers + numpy and the standard library, nothing else. This file has no
import from the rest of `lifecycle`, so it can be copied alone onto a device: that is why it is one
module of ~750 lines (predictor, table preprocessing, bundle verification, signatures, the external-data
reader, the ISA check) and not a package.

    from lifecycle.edge import Predictor
    p = Predictor.open("model.zip")          # or an export/quantize artifact directory
    p.predict(["some text"])                 # [{"label": ..., "score": ..., "scores": {...}}]
    p.embed(["some text"])                   # an embedding model: (n, dim) array
    p.predict_rows([{"island": "Dream", "body_mass_g": None}])  # a table model, from raw rows (also
                                             # regress_rows, score_rows); missing values as None
    p.classify_images([png_bytes, uint8_array])  # an image classifier: encoded PNG/JPEG or pixels
    p.embed_images([png_bytes, uint8_array])     # an image embedder: (n, dim) float32, normalised in the graph
    p.answers(["some text"])                 # whichever of those the model's task declares, as JSON
    p.check()                                # re-runs the predictions the pipeline recorded

A text's answer does not depend on what it is batched with (see Predictor.logits): texts are never
padded, and a graph that quantizes activations at run time gets one text per call.

A directory or zip holds model.onnx, tokenizer.json (preprocessing.json for a table model,
preprocessor_config.json for an image model: schema.json names it), labels.json and schema.json. When it holds
manifest.json (a bundle always does), every file's sha256 is checked before anything is loaded and
files the manifest does not list are refused. ONNX external data is accepted only when every location
is a plain relative path to a regular file inside the bundle: no absolute paths, no `..`, no symlinks.
With `trusted_keys=` (public Ed25519 PEM files), open() also requires manifest.sig, a signature over
manifest.json by one of those keys (lifecycle.signing writes it; `cryptography` is imported only then).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
import weakref
import zipfile
import zlib
from pathlib import Path, PurePosixPath

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

import numpy as np  # noqa: E402

MODEL, TOKENIZER, LABELS, SCHEMA, MANIFEST = "model.onnx", "tokenizer.json", "labels.json", "schema.json", "manifest.json"
REQUIRED = (MODEL, LABELS, SCHEMA)  # plus the preprocessor schema.json names (preprocessor_file)
# Ops that quantize activations with a scale computed at run time over the whole input tensor: in such
# a graph every text in a batch (and every padding token) moves the scale, so co-batched texts change
# each other's scores (see Predictor.logits). QAttention / MatMulIntegerToFloat are fed by
# DynamicQuantizeLinear in such graphs; the Dynamic* contrib ops are what onnxruntime fuses it into.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
SIGNATURE = "manifest.sig"  # signature over manifest.json: the one file the manifest cannot list


# x86 int8 dot-product instructions. Without one, onnxruntime's u8s8 kernels (uint8 activations, int8
# weights: what the quantize stage writes) add pairs of products in int16 and can saturate, so a graph
# answers differently on a CPU with VNNI than on one without; 7-bit weights (reduce_range) avoid it.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags from /proc/cpuinfo; None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def int8_isa_warning(schema: dict, manifest: dict | None, running: set[str] | None, source) -> str | None:
    """Why this u8s8 int8 graph may answer differently here than on the CPU its gates were checked on
    (the manifest's `isa`, or its environment's), or None: only x86 on both sides, and only a change in
    VNNI matters."""
    int8 = schema.get("int8")
    if not int8 or int8.get("reduce_range") or not manifest or running is None:
        return None
    gated = set(manifest.get("isa") or (manifest.get("environment") or {}).get("isa") or ())
    x86 = {"avx2", "avx512f"}
    if not (gated & x86 and running & x86) or bool(gated & VNNI_FLAGS) == bool(running & VNNI_FLAGS):
        return None
    had, has = ("with", "without") if gated & VNNI_FLAGS else ("without", "with")
    return (f"{source}: this u8s8 int8 model was gated on a CPU {had} VNNI and runs on one {has} it; onnxruntime's "
            "u8s8 kernels can saturate without VNNI, so its answers may differ from the ones its gates checked. "
            "For such targets quantize with `reduce_range: true` (7-bit weights) and gate on such a CPU.")


class BundleError(Exception):
    """A bundle that is incomplete, tampered with, or points outside itself."""


# A serving worker that refuses its bundle writes this line before it fails, so that whoever waits for
# the server (lifecycle.serving.Server) stops waiting at once with the reason: BentoML keeps the server
# up and restarts the worker, which would refuse again, until the startup timeout.
BUNDLE_REFUSED = "lifecycle: bundle refused:"


class Predictor:
    def __init__(self, root: Path, threads: int | None = None, spinning: bool = True, profile: str | None = None,
                 spin_between_runs: bool = False):
        import onnxruntime as ort

        self.root = Path(root)
        self.manifest: dict | None = None  # set by open() when the source has a manifest
        self.isa_warning: str | None = None  # set by open(): see int8_isa_warning
        self.schema = json.loads((self.root / SCHEMA).read_text())
        self.labels: list[str] = json.loads((self.root / LABELS).read_text())
        # What turns raw input into the graph's feeds: a tokenizer for texts, TablePreprocessing for rows.
        self.tokenizer = self.table = self.image = None
        if preprocessor_file(self.schema) == PREPROCESSING:
            self.table = TablePreprocessing.load(self.root / PREPROCESSING)
            self.max_length = 0  # rows have no length
        elif preprocessor_file(self.schema) == IMAGE_PROCESSOR:
            self.image = ImagePreprocessing.load(self.root / IMAGE_PROCESSOR)
            self.max_length = 0  # images have no length: every one is resized to the model's size
        else:
            from tokenizers import Tokenizer

            self.max_length: int = self.schema["max_length"]
            self.tokenizer = Tokenizer.from_file(str(self.root / TOKENIZER))
            self.tokenizer.enable_truncation(self.max_length)
            self.tokenizer.no_padding()  # logits() never pads; encode() pads by hand (no shared state to toggle)
        self.pad_id: int = self.schema.get("pad_token_id") or 0
        check_external_data(self.root / MODEL)
        # True: one text per session call (see logits); found by scanning the graph, not the schema's
        # "weights" note, so a graph quantized elsewhere is caught too.
        self.batch_dependent = bool(op_types(self.root / MODEL) & BATCH_DEPENDENT_OPS)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:  # servers: an idle spinning pool burns cores that request handling needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Spinning threads stay hot between operators within a run. After it they stop unless asked
        # (a server answering back to back): left spinning, they take the cores from whatever the process
        # runs next, and a session timed alternately with another one measured about twice its own time
        # (benchmarks/spinning.py; the stop costs a wake-up per run, also measured there).
        if not spin_between_runs:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        # The session settings the graph was gated with (schema.json `session_config`; e.g. an onnxruntime
        # fusion that the export measured as slower for this graph, lifecycle.components.onnx.maybe_fused).
        for key, value in self.schema.get("session_config", {}).items():
            opts.add_session_config_entry(key, value)
        if profile:  # onnxruntime's profiler: session.end_profiling() writes <profile>_<time>.json
            opts.enable_profiling, opts.profile_file_prefix = True, profile
        self.session = ort.InferenceSession(str(self.root / MODEL), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        # A decoder with a KV cache (task generation): its past inputs (name, shape, type) and settings.
        self.generation: dict | None = self.schema.get("generation")
        self.past = [(i.name, i.shape, i.type) for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.generation is not None:
            self.tokenizer.no_truncation()  # a prompt over the context is refused (generate), never cut silently

    @property
    def task(self) -> str:
        """What the model is for, as the pipeline's task plug-in named it (lifecycle.tasks)."""
        return self.schema.get("task", "classification")

    @property
    def method(self) -> str:
        """The method that answers for this model ("predict", "embed"...), declared by its task."""
        return self.schema.get("method", "predict")

    @property
    def route(self) -> str:
        """The service's POST route for this model ("/classify", "/embed"...), declared by its task."""
        return self.schema.get("route", "/classify")

    def sample_input(self):
        """One input the model accepts (a warm-up): a text, a row of missing values for a table model, a
        black image for an image model."""
        if self.image is not None:
            return self.image.blank()
        return {c: None for c in self.table.columns} if self.table is not None else "warm-up"

    def answers(self, texts: list[str]) -> list:
        """The answer per text of the model's own method, as JSON values (what a service returns)."""
        out = getattr(self, self.method)(texts)
        return out.tolist() if isinstance(out, np.ndarray) else out

    def _only_for(self, method: str) -> None:
        if self.method != method:
            raise BundleError(f"{self.root}: this {self.task} model answers {self.method}(), not {method}()")

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, spinning: bool = True,
             trusted_keys: list | None = None, profile: str | None = None, spin_between_runs: bool = False) -> Predictor:
        """Open a bundle zip or a model directory, verifying it first (see the module docstring).
        `trusted_keys` (public key PEM paths or bytes): refuse it unless manifest.sig verifies with one.
        `profile`: a file prefix for onnxruntime's op profiler (off by default). `spin_between_runs`: keep
        onnxruntime's threads spinning after a run, for a server that answers back to back."""
        path = source = Path(path)
        extracted = None
        if path.is_file() and zipfile.is_zipfile(path):
            path = extracted = _extract(path)
            if not (path / MANIFEST).is_file():
                shutil.rmtree(extracted, ignore_errors=True)
                raise BundleError(f"{source}: a bundle needs {MANIFEST}; write it with `lifecycle bundle`")
        try:
            for name in (*REQUIRED, preprocessor_file(_read_schema(path))):
                if (path / name).is_symlink():
                    raise BundleError(f"{path / name}: symlinks are not allowed in a bundle")
                if not (path / name).is_file():
                    raise BundleError(f"{path}: no {name}; pass an export/quantize artifact or a bundle made by "
                                      "`lifecycle bundle`")
            manifest = verify(path) if (path / MANIFEST).is_file() else None
            if trusted_keys is not None:
                if manifest is None or not (path / SIGNATURE).is_file():
                    raise BundleError(f"{source}: unsigned (no {SIGNATURE}); trusted keys are configured, so only "
                                      "bundles written with `lifecycle bundle --sign` are accepted")
                check_signature((path / MANIFEST).read_bytes(), (path / SIGNATURE).read_bytes(), trusted_keys, source)
            predictor = cls(path, threads, spinning, profile, spin_between_runs)
        except BaseException:
            if extracted:
                shutil.rmtree(extracted, ignore_errors=True)
            raise
        predictor.manifest = manifest
        predictor.isa_warning = int8_isa_warning(predictor.schema, manifest, cpu_flags(), source)
        if predictor.isa_warning:
            warnings.warn(predictor.isa_warning, RuntimeWarning, stacklevel=2)
        if extracted:  # the session holds the weights now; the files go when the predictor does
            weakref.finalize(predictor, shutil.rmtree, extracted, True)
        return predictor

    def encode(self, texts: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Feeds for texts, right-padded to the longest (or to pad_to). For latency measurements and
        calibration; logits() batches only texts of equal length and never pads. A table model takes
        rows (mappings column -> value) instead of texts, and pad_to does not apply."""
        if self.table is not None:  # a graph may leave out an input it does not use (no categorical columns)
            return {k: v for k, v in self.table.transform_rows(list(texts))[0].items() if k in self.input_names}
        if self.image is not None:  # images: every one is resized to the model's size; pad_to does not apply
            return {"pixel_values": self.image.transform(list(texts))}
        return self._feeds(self.tokenizer.encode_batch(list(texts)), pad_to)

    def _feeds(self, encs: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        length = max([pad_to or 1, *(len(e.ids) for e in encs)])  # an empty encoding still gets one position
        feeds = {name: np.zeros((len(encs), length), dtype=np.int64)
                 for name in ("input_ids", "attention_mask", "token_type_ids") if name in self.input_names}
        if "input_ids" in feeds:
            feeds["input_ids"].fill(self.pad_id)
        for row, e in enumerate(encs):
            n = len(e.ids)
            for name, values in (("input_ids", e.ids), ("attention_mask", e.attention_mask),
                                 ("token_type_ids", e.type_ids)):
                if name in feeds:
                    feeds[name][row, :n] = values
        if self.past:  # a decoder run on whole texts: positions from 0 and an empty cache
            if "position_ids" in self.input_names:
                feeds["position_ids"] = np.tile(np.arange(length, dtype=np.int64), (len(encs), 1))
            feeds.update(self._empty_past(len(encs)))
        return feeds

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation (for servers that reject over-long input)."""
        self.tokenizer.no_truncation()
        try:
            return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        finally:
            self.tokenizer.enable_truncation(self.max_length)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The graph's output per text, float32, in input order. A text's row is the same whatever it is
        batched with, so the service (one text or many per request, BentoML's adaptive batches), the
        bundle and the stages give one answer per text:
        - texts are grouped by token count and only equal-length texts share a session call, so no
          text is ever padded: each is computed exactly as it would be alone;
        - a graph with run-time activation scales (BATCH_DEPENDENT_OPS) gets one text per call.
        """
        # Measured (issue 16: 300 news texts, max_length 128 (51 distinct token counts) and 32, requests
        # of 32 texts in three shuffles, one onnxruntime thread, the policies interleaved in one process):
        # - answers: fp32 and static int8 rows are bit-identical to the text alone when grouped (and,
        #   on these graphs, even when padded: masking is exact there, but nothing promises it for
        #   every graph); dynamic int8 rows move when co-batched, padded or grouped alike (up to 0.026
        #   in probability, 5 label flips in 900, bert-tiny at max_length 32), and are bit-identical
        #   one text per call.
        # - samples/s, padded to the longest of the batch -> grouped (dynamic: one per call; grouped):
        #   bert-tiny fp32 2472 -> 3566, static 2870 -> 3823, dynamic 3165 -> 3974 (4324);
        #   bert-small fp32 46 -> 61, static 85 -> 113, dynamic 118 -> 157 (160).
        #   Padding 32 news texts to the longest wastes more compute than the extra calls cost, and
        #   batching gains onnxruntime little on CPU: one call per text costs dynamic int8 2-8%.
        if self.table is not None:
            return self.table_outputs(texts, batch_size)[0]
        if self.image is not None:
            return self.image_outputs(texts, batch_size)
        if self.generation is not None:
            return self.generator_rows(texts)
        encs = self.tokenizer.encode_batch(list(texts))
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(encs):
            groups.setdefault(len(e.ids), []).append(i)
        size = 1 if self.batch_dependent else max(1, batch_size)
        order, outs = [], []
        for rows in groups.values():
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                outs.append(self.session.run(None, self._feeds([encs[i] for i in chunk]))[0])
                order.extend(chunk)
        if not outs:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        stacked = np.concatenate(outs).astype(np.float32)  # float32 always: an fp16 graph may return half
        result = np.empty_like(stacked)
        result[order] = stacked
        return result

    # ------------------------------------------------------------------ generation (a decoder with a KV cache)
    # One prompt at a time: no padding, so a prompt's tokens do not depend on what it is sent with, and a
    # graph with run-time activation scales (dynamic int8) sees exactly what it saw when it was gated.
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

    def _step(self, ids: list[int], past: dict | None, total: int) -> tuple[np.ndarray, dict]:
        """Run `ids`, the last len(ids) tokens of a sequence of `total`, on the cache `past` (None: empty):
        (the logits after the last of them, the cache after them)."""
        n = len(ids)
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
        if len(ids) >= self.max_length:
            raise PromptTooLong(len(ids), self.max_length)
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

    def generator_rows(self, prompts: list[str]) -> np.ndarray:
        """A generator's `logits()`: per prompt, the next-token logits after it, then the first
        `agreement_tokens` greedy tokens with the KV cache (-1 after end-of-text): what export's parity and
        the quantize ladder compare with PyTorch / the fp32 graph (lifecycle.tasks.generation)."""
        n = self.generation["agreement_tokens"]
        rows = []
        for p in prompts:
            answer, first = self._continue(self.prompt_ids(p), n, 0.0, 0, 1.0, None, [], None, True)
            tokens = np.full(n, -1, dtype=np.float32)
            tokens[: len(answer["tokens"])] = answer["tokens"]
            rows.append(np.concatenate([first, tokens]))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, n), dtype=np.float32)

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

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings (n, dim), float32: pooling and normalisation are inside the graph."""
        self._only_for("embed")
        return self.logits(texts, batch_size)

    def table_outputs(self, rows: list[dict], batch_size: int = 64) -> tuple[np.ndarray, dict]:
        """(the graph's output per row, what preprocessing counted: missing values, unknown categories,
        out-of-range numbers, extra columns). Rows have no length, so any rows share a call; a graph
        with run-time activation scales still gets one row per call (see logits)."""
        feeds, counts = self.table.transform_rows(list(rows))
        n = len(rows)
        size = 1 if self.batch_dependent else max(1, batch_size)
        outs = [self.session.run(None, {k: v[i : i + size] for k, v in feeds.items() if k in self.input_names})[0]
                for i in range(0, n, size)]
        if not outs:
            return np.zeros((0, max(1, len(self.labels))), dtype=np.float32), counts
        return np.concatenate(outs).astype(np.float32), counts

    def image_outputs(self, images: list, batch_size: int = 64) -> np.ndarray:
        """The graph's output per image (encoded PNG/JPEG bytes, a PIL image or uint8 pixels (H, W[, C])),
        through the model's image preprocessing (ImagePreprocessing). Every image is resized to one size,
        so any images share a call; a graph with run-time activation scales gets one image per call."""
        pixels = self.image.transform(list(images))
        size = 1 if self.batch_dependent else max(1, batch_size)
        outs = [self.session.run(None, {"pixel_values": pixels[i : i + size]})[0] for i in range(0, len(pixels), size)]
        if not outs:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)

    def classify_images(self, images: list) -> list[dict]:
        """{"label", "score", "scores"} per image (encoded PNG/JPEG bytes or uint8 pixels): an image
        classifier's answer, preprocessing included (ImageError for bytes that are not an allowed image)."""
        self._only_for("classify_images")
        return self._label_scores(self.image_outputs(images))

    def embed_images(self, images: list) -> np.ndarray:
        """Embeddings (n, dim), float32, per image (encoded PNG/JPEG bytes or uint8 pixels), preprocessing
        included; pooling and normalisation are inside the graph (ImageError for bytes that are not an
        allowed image)."""
        self._only_for("embed_images")
        return self.image_outputs(images)

    def predict_rows(self, rows: list[dict]) -> list[dict]:
        """{"label", "score", "scores"} per table row (a mapping column -> value; null for a missing
        value): a table classifier's answer from the raw row, preprocessing included."""
        self._only_for("predict_rows")
        return self._label_scores(self.table_outputs(rows)[0])

    def score_rows(self, rows: list[dict]) -> list[dict]:
        """{"anomaly_score"} per table row: higher is more anomalous (a masked-feature model's reconstruction error)."""
        self._only_for("score_rows")
        return [{"anomaly_score": float(v)} for v in self.table_outputs(rows)[0].reshape(-1)]

    def regress_rows(self, rows: list[dict]) -> list[dict]:
        """{"value"} per table row: a table regressor's prediction, in the target's units."""
        self._only_for("regress_rows")
        return [{"value": float(v)} for v in self.table_outputs(rows)[0].reshape(-1)]

    def predict(self, texts: list[str]) -> list[dict]:
        """{"label", "score", "scores"} per text: the softmax of a classifier's logits."""
        self._only_for("predict")
        return self._label_scores(self.logits(texts))

    def _label_scores(self, logits: np.ndarray) -> list[dict]:
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({"label": self.labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(self.labels, row)}})
        return out

    def check(self, atol: float = 1e-4) -> int:
        """Re-run the sample predictions recorded by the pipeline (in the manifest) and raise
        BundleError if an answer differs: a label or any other string, or a number by more than atol.
        Returns how many matched. A device runs this once after install to prove its runtime
        reproduces the pipeline."""
        m = self.manifest or {}
        expected = m.get("sample_predictions") or m.get("details", {}).get("sample_predictions") or []
        if not expected:
            raise BundleError(f"{self.root}: the manifest records no sample predictions to check")
        # a table model records rows, an image model its images as base64 PNG
        inputs = [e["row"] if "row" in e else _b64(e["image"]) if "image" in e else e["text"] for e in expected]
        for x, e, got in zip(inputs, expected, self.answers(inputs)):
            where = _difference(e["answer"], got, atol)
            if where is not None:
                raise BundleError(f"prediction differs from the pipeline's for {str(x)[:60]!r}: {where}")
        return len(expected)


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text, validate=True)


def _difference(want, got, atol: float, path: str = "answer") -> str | None:
    """Where two JSON answers differ (strings exactly, numbers by more than atol), or None."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return f"{path}: expected keys {sorted(want)}, got {sorted(got)}"
        return next((d for k in want if (d := _difference(want[k], got[k], atol, f"{path}.{k}"))), None)
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: expected {len(want)} values, got {len(got)}"
        return next((d for i, (w, g) in enumerate(zip(want, got)) if (d := _difference(w, g, atol, f"{path}[{i}]"))),
                    None)
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (want, got))
    if numbers and abs(want - got) <= atol or not numbers and want == got:
        return None
    return f"{path}: expected {want!r}, got {got!r}"


def verify(root: Path) -> dict:
    """Check every file listed in manifest.json against its sha256 and refuse files it does not
    list (an unlisted file could be swapped in unnoticed); returns the manifest."""
    root = Path(root)
    manifest = read_manifest(root / MANIFEST)
    files: dict[str, str] = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BundleError(f"{root / MANIFEST}: 'files' is not a mapping of file names to sha256; write the bundle "
                          "again with `lifecycle bundle`")
    for name in (*REQUIRED, preprocessor_file(_read_schema(root))):
        if name not in files:
            raise BundleError(f"{root}: the manifest does not list {name}")
    for rel, digest in files.items():
        f = root / rel
        if f.is_symlink() or not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing (or a symlink)")
        if _sha256(f) != digest:
            raise BundleError(f"{f}: does not match its sha256 in the manifest (tampered or corrupt)")
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() or (f.is_file() and rel not in (MANIFEST, SIGNATURE) and rel not in files):
            raise BundleError(f"{f}: not listed in the manifest; refusing a bundle with unlisted files or symlinks")
    return manifest


def read_manifest(path: Path, data: bytes | None = None) -> dict:
    """A bundle's or artifact's manifest.json (`data`: its bytes, already read within the limit), refused in
    one line when it is over MAX_MANIFEST_BYTES, not JSON, or not a JSON object."""
    try:
        if data is None:
            if Path(path).stat().st_size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path}: over {MAX_MANIFEST_BYTES} bytes, more than any manifest holds")
            data = Path(path).read_bytes()
        manifest = json.loads(data)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: a JSON {type(manifest).__name__}, not a manifest (a JSON object)")
    return manifest


def preprocessor_file(schema: dict) -> str:
    """The file that turns raw input into the graph's feeds, as schema.json names it: tokenizer.json
    for a text model (the default: older artifacts do not name it), preprocessing.json for a table,
    preprocessor_config.json for images."""
    return schema.get("preprocessor", TOKENIZER)


def _read_schema(root: Path) -> dict:
    try:
        schema = json.loads((Path(root) / SCHEMA).read_text())
    except (OSError, ValueError):
        return {}  # a missing or broken schema.json is refused with REQUIRED's message
    return schema if isinstance(schema, dict) else {}


def key_id(raw_public_key: bytes) -> str:
    """Short id of an Ed25519 public key (first 16 hex digits of the sha256 of its 32 raw bytes)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def check_signature(manifest: bytes, signature: bytes, trusted_keys: list, source,
                    names: tuple[str, str] = (MANIFEST, SIGNATURE)) -> str:
    """Verify manifest.sig (`signature`) over the exact manifest bytes with one of `trusted_keys`
    (PEM public keys: paths or bytes); returns the key id that signed, else raises BundleError.
    `names`: what the signed document and the signature file are called, for the messages."""
    signed_name, sig_name = names
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        record = json.loads(signature)
        sig = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: unreadable {sig_name} ({exc})") from None
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"{source}: {sig_name} uses {record.get('algorithm')!r}; only ed25519 is accepted")
    if not trusted_keys:
        raise BundleError(f"{source}: no trusted keys given to check {sig_name} against")
    ids = []
    for key in trusted_keys:
        try:
            pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        except OSError as exc:
            raise BundleError(f"{key}: cannot read the trusted key ({exc.strerror})") from None
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError:
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not a PEM public key "
                              "(pass the .pub file, not the private key)") from None
        if not isinstance(public, Ed25519PublicKey):
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not an Ed25519 public key")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ids.append(key_id(raw))
        try:
            public.verify(sig, manifest)
            return ids[-1]
        except InvalidSignature:
            continue
    raise BundleError(f"{source}: bad signature: {signed_name} is not signed by a trusted key "
                      f"(signed by key {record.get('key_id')}, trusted: {', '.join(ids)}; or it was edited)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------- ONNX external data check
# The locations of external tensors are read from the ModelProto with a minimal protobuf wire-format
# reader, so this check needs no `onnx` package. Field numbers from onnx.proto; each entry maps a
# field of a message to the message type it holds. Every place a TensorProto can live is walked:
# initializers, sparse initializers, node attributes (also inside subgraphs, functions and
# training-info graphs).
_MESSAGES = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # TensorProto.external_data: repeated StringStringEntryProto
}


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise BundleError("model.onnx is not a valid ONNX file (truncated varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value) of one message; value is an int or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1 or wire == 5:
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise BundleError(f"model.onnx is not a valid ONNX file (wire type {wire})")
        if pos > end:
            raise BundleError("model.onnx is not a valid ONNX file (field runs past its message)")
        yield field, wire, value


def _walk(buf: memoryview):
    """(message kind, field, wire type, value) for every field of every message reachable from the
    ModelProto through _MESSAGES; "entry" messages are yielded, not entered."""
    stack = [("model", 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        for field, wire, value in _fields(buf, start, end):
            yield kind, field, wire, value
            child = _MESSAGES[kind].get(field)
            if child is not None and child != "entry" and wire == 2:
                stack.append((child, *value))


def external_data_locations(model_path: Path) -> list[str]:
    """Every `location` named by an external-data tensor in the model, in file order."""
    buf = memoryview(Path(model_path).read_bytes())
    out = []
    for kind, field, wire, value in _walk(buf):
        if kind == "tensor" and field == 13 and wire == 2:  # StringStringEntryProto: key = 1, value = 2
            entry = {f: bytes(buf[v[0] : v[1]]) for f, w, v in _fields(buf, *value) if w == 2}
            if entry.get(1) == b"location":
                out.append(entry.get(2, b"").decode("utf-8", errors="replace"))
    return out


def op_types(model_path: Path) -> set[str]:
    """The op_type of every node in the model: main graph, subgraphs and functions (NodeProto field 4)."""
    buf = memoryview(Path(model_path).read_bytes())
    return {bytes(buf[v[0] : v[1]]).decode("utf-8", errors="replace")
            for kind, field, wire, v in _walk(buf) if kind == "node" and field == 4 and wire == 2}


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_external_data(model_path: Path) -> list[str]:
    """Refuse external-data locations that leave the model's directory: absolute paths, `..`, drive
    letters, backslashes, symlinks anywhere on the way, missing files. Returns the locations.
    (With a manifest, `verify` has already refused any file it does not list.)"""
    model_path = Path(model_path)
    root = model_path.parent
    locations = external_data_locations(model_path)
    for loc in locations:
        parts = PurePosixPath(loc).parts
        bad = (not loc or "\x00" in loc or "\\" in loc or loc.startswith("/") or _DRIVE.match(loc)
               or ".." in parts or os.path.isabs(loc))
        target = root / loc
        if not bad:
            node = root
            for part in parts:  # no symlink at any level, so the path cannot be redirected
                node = node / part
                if node.is_symlink():
                    bad = True
                    break
        if bad or not target.is_file() or not target.resolve().is_relative_to(root.resolve()):
            raise BundleError(f"{model_path}: external data location '{loc}' is not a regular file inside the "
                              "bundle (absolute, '..', symlink or missing)")
    return locations


# Zip extraction limits. A deflated member can expand ~1000x (a 1 MB zip held a 300 MB member), so sizes
# are checked from the zip's directory before anything is written and counted again while writing:
# the directory can lie (Python's zipfile stops at the declared size, then fails the CRC check).
# Weights compress to ~1.1x, tokenizer.json to ~4x: 100x is refused, for members over 1 MiB (small files,
# labels or a schema, may compress far better and cost nothing). The ratio is also checked over the
# whole archive, because 400 members just under 1 MiB each (a 453 KB zip expanding to ~400 MB) pass every
# per-member check: a real bundle is dominated by its weights, so its total ratio stays near theirs. The
# trade-off: a model whose weights are mostly zeros (>99% sparse, stored dense) is refused; such a model
# compresses its weights itself. MAX_MEMBERS is far above what any bundle holds (~8 files; external data
# saved one file per tensor is a few hundred) and bounds the work the directory alone can cause.
MAX_MEMBER_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO, RATIO_FROM_BYTES = 100, 1 << 20
MAX_MEMBERS = 4096
# manifest.json holds hashes, metrics, gate results and a few recorded predictions: tens of KB. Parsing
# JSON costs several times its size in memory, so a manifest is refused above this before it is read.
MAX_MANIFEST_BYTES = 8 << 20
EXTRACT_PREFIX = "lifecycle-bundle-"
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error)


def _extract(zip_path: Path, max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES,
             max_ratio: float = MAX_RATIO) -> Path:
    """Extract a bundle into a fresh temp directory, refusing members that would land outside it
    (absolute, `..`, drive letters, backslashes), symlinks, special files, duplicate names, and sizes
    over the limits above (per member, in total, compression ratio; also more than the free disk)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = _checked_members(zip_path, zf, max_member_bytes, max_total_bytes, max_ratio)
            out = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX))
            try:
                total = 0
                for info in infos:
                    total += _write_member(zip_path, zf, info, out / info.filename, max_member_bytes, max_ratio)
                    if total > max_total_bytes:
                        raise BundleError(f"{zip_path}: members expand to more than {max_total_bytes} bytes")
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
    except (*_ZIP_ERRORS, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:  # the last three: 'a' and 'a/b'
        raise BundleError(f"{zip_path}: not a readable bundle zip ({exc}); write it again with "
                          "`lifecycle bundle`") from None
    return out


def zip_manifest(zip_path: Path) -> dict:
    """A bundle zip's manifest.json, read without extracting anything: its size is checked in the zip's
    directory first (and zipfile reads no more than that size); {} when the zip has none."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if MANIFEST not in zf.namelist():
                return {}
            info = zf.getinfo(MANIFEST)
            _check_manifest_size(zip_path, info.file_size)
            data = zf.read(info)
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{zip_path}: not a readable bundle zip ({exc}); write it again with "
                          "`lifecycle bundle`") from None
    return read_manifest(f"{zip_path}:{MANIFEST}", data)


def _check_manifest_size(zip_path: Path, size: int) -> None:
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{zip_path}: its {MANIFEST} expands to {size} bytes; the limit is {MAX_MANIFEST_BYTES}")


def _checked_members(zip_path: Path, zf: zipfile.ZipFile, max_member_bytes: int, max_total_bytes: int,
                     max_ratio: float) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{zip_path}: {len(infos)} members; a bundle holds at most {MAX_MEMBERS}")
    names, total, compressed = set(), 0, 0
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        unsafe = (name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in PurePosixPath(name).parts
                  or "\x00" in name)
        if unsafe or (kind and kind not in (stat.S_IFREG, stat.S_IFDIR)):
            what = "a symlink or special file" if not unsafe else "written outside the bundle"
            raise BundleError(f"{zip_path}: member '{name}' would be {what}")
        if name in names:
            raise BundleError(f"{zip_path}: member '{name}' appears twice")
        names.add(name)
        _check_size(zip_path, name, info.file_size, info.compress_size, max_member_bytes, max_ratio)
        if name == MANIFEST:
            _check_manifest_size(zip_path, info.file_size)
        total += info.file_size
        compressed += info.compress_size
    if total > max_total_bytes:
        raise BundleError(f"{zip_path}: members expand to {total} bytes; the limit is {max_total_bytes}")
    if total > RATIO_FROM_BYTES and total > max_ratio * max(compressed, 1):
        raise BundleError(f"{zip_path}: members expand {total / max(compressed, 1):.0f}x in all ({compressed} -> "
                          f"{total} bytes); the limit is {max_ratio:g}x (a zip bomb?)")
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if total > free:
        raise BundleError(f"{zip_path}: members expand to {total} bytes, more than the {free} bytes free in "
                          f"{tempfile.gettempdir()}")
    return infos


def _check_size(zip_path: Path, name: str, size: int, compressed: int, max_member_bytes: int,
                max_ratio: float) -> None:
    if size > max_member_bytes:
        raise BundleError(f"{zip_path}: member '{name}' expands to {size} bytes; the limit is {max_member_bytes}")
    if size > RATIO_FROM_BYTES and size > max_ratio * max(compressed, 1):
        raise BundleError(f"{zip_path}: member '{name}' expands {size / max(compressed, 1):.0f}x "
                          f"({compressed} -> {size} bytes); the limit is {max_ratio:g}x (a zip bomb?)")


def _write_member(zip_path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                  max_member_bytes: int, max_ratio: float) -> int:
    """Copy one member, counting what it really expands to; returns the bytes written."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while block := src.read(1 << 20):
            written += len(block)
            if written > info.file_size:
                raise BundleError(f"{zip_path}: member '{info.filename}' holds more than the {info.file_size} "
                                  "bytes its header declares")
            _check_size(zip_path, info.filename, written, info.compress_size, max_member_bytes, max_ratio)
            dst.write(block)
    return written


# ------------------------------------------------------------------------------- table preprocessing
# One transform from raw rows to the graph's feeds, used by training (lifecycle.data.tables), the edge
# runtime and the service, so the same row gives the same tensors everywhere. Its parameters (fitted
# on the training split only) are plain JSON: preprocessing.json beside the graph.
PREPROCESSING = "preprocessing.json"
MISSING_ID, UNKNOWN_ID = 0, 1  # category ids 0 and 1; a vocabulary's own values start at 2
_TRUE, _FALSE = {"true", "1", "yes", "t", "y"}, {"false", "0", "no", "f", "n"}


class RowError(ValueError):
    """A row the schema refuses: a required column absent, or a value of the wrong type. `column` names it."""

    def __init__(self, column: str, reason: str):
        super().__init__(f"column '{column}': {reason}")
        self.column, self.reason = column, reason


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)  # NaN (numpy floats are Python floats too)


def _boolean(column: str, v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    s = str(v).strip().lower() if isinstance(v, (str, int, np.integer)) else None
    if s in _TRUE or s in _FALSE:
        return "true" if s in _TRUE else "false"
    raise RowError(column, f"expected a boolean (true/false, 1/0, yes/no), got {v!r}")


class TablePreprocessing:
    """Raw table rows -> the feature tokenizer's inputs, with its fitted parameters:
    - numeric: (x - mean) / std, clipped to the training range (an out-of-range value is counted); a
      missing value is 0 in `numeric` and 1 in `numeric_missing`, from which the model takes a learned
      "missing" embedding instead of reading the 0 as a value;
    - categorical and boolean: id 0 missing, 1 unknown (not in the training vocabulary: counted), 2.. the
      vocabulary; booleans have the vocabulary ["false", "true"].
    A column the schema requires but a row lacks, or a value of the wrong type, raises RowError."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.numeric: list[dict] = spec["numeric"]  # {"name", "mean", "std", "min", "max"}
        self.categorical: list[dict] = spec["categorical"]  # {"name", "vocabulary", "boolean"}
        self.columns = [c["name"] for c in (*self.numeric, *self.categorical)]
        self._ids = [{v: i + 2 for i, v in enumerate(c["vocabulary"])} for c in self.categorical]

    @classmethod
    def load(cls, path: Path) -> TablePreprocessing:
        return cls(json.loads(Path(path).read_text()))

    def transform_rows(self, rows: list[dict]) -> tuple[dict[str, np.ndarray], dict]:
        """Rows (mappings column -> value) -> (feeds, counts). Extra keys are ignored and counted."""
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RowError("*", f"row {i} is not a mapping of column -> value")
            for name in self.columns:
                if name not in row:
                    raise RowError(name, f"missing from row {i} (a required column; send null for a missing value)")
        known = set(self.columns)
        extra: dict[str, int] = {}
        for row in rows:
            for k in row:
                if k not in known:
                    extra[k] = extra.get(k, 0) + 1
        feeds, counts = self.transform_columns({c: [r[c] for r in rows] for c in self.columns}, len(rows))
        counts["extra_columns"] = extra
        return feeds, counts

    def transform_columns(self, columns: dict[str, list], n: int) -> tuple[dict[str, np.ndarray], dict]:
        """Column-wise: columns[name] holds n values (None or NaN: missing)."""
        counts: dict[str, dict[str, int]] = {"missing": {}, "unknown_category": {}, "out_of_range": {}}
        num = np.zeros((n, len(self.numeric)), dtype=np.float32)
        missing = np.zeros((n, len(self.numeric)), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            values = np.empty(n, dtype=np.float64)
            for i, v in enumerate(columns[c["name"]]):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating, type(None))):
                    raise RowError(c["name"], f"expected a number or null, got {v!r}")
                try:
                    values[i] = np.nan if v is None else float(v)
                except OverflowError:  # an integer of hundreds of digits: no float holds it
                    raise RowError(c["name"], f"number too large ({len(str(abs(v)))} digits)") from None
            gone = np.isnan(values)
            outside = ~gone & ((values < c["min"]) | (values > c["max"]))
            values = np.clip(values, c["min"], c["max"])
            num[:, j] = np.where(gone, 0.0, (values - c["mean"]) / c["std"])
            missing[:, j] = gone
            _count(counts["missing"], c["name"], int(gone.sum()))
            _count(counts["out_of_range"], c["name"], int(outside.sum()))
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (c, ids) in enumerate(zip(self.categorical, self._ids)):
            gone = unknown = 0
            for i, v in enumerate(columns[c["name"]]):
                if _is_missing(v):
                    cat[i, j], gone = MISSING_ID, gone + 1
                    continue
                if c.get("boolean"):
                    key = _boolean(c["name"], v)
                elif isinstance(v, (str, int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                    key = str(v)
                else:
                    raise RowError(c["name"], f"expected a category (text or integer) or null, got {v!r}")
                cat[i, j] = ids.get(key, UNKNOWN_ID)
                unknown += key not in ids
            _count(counts["missing"], c["name"], gone)
            _count(counts["unknown_category"], c["name"], unknown)
        return {"numeric": num, "numeric_missing": missing, "categorical": cat}, counts


def _count(into: dict, name: str, n: int) -> None:
    if n:
        into[name] = into.get(name, 0) + n


# ------------------------------------------------------------------------------- image preprocessing
# One transform from an image to the graph's `pixel_values`, used by training (lifecycle.images), the
# stages' evaluation, the edge runtime and the service, so the same pixels give the same tensor everywhere.
# Its parameters are a transformers image-processor config (ViTImageProcessor's preprocessor_config.json:
# resize to `size` with `resample`, rescale, normalise by `image_mean` / `image_std`), and the arithmetic
# is transformers' own (rescale in float64 then float32, normalise in float32), so
# ViTImageProcessor.from_pretrained(dir) gives the same tensor too (tested); here it needs only numpy and
# Pillow. Decoding checks the pixel count from the header before any pixel is decoded.
IMAGE_PROCESSOR = "preprocessor_config.json"
IMAGE_FORMATS = ("PNG", "JPEG")  # what decode_image accepts unless told otherwise
MAX_IMAGE_PIXELS = 4096 * 4096  # decode_image's default limit (width x height, from the header)
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS  # the service's default pixel budget per request (check_request_pixels)
# Modes converted to the model's ("L" or "RGB"); others (16-bit "I;16", float "F") would be rescaled
# wrongly by a plain conversion and are refused.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"})


class ImageError(ValueError):
    """Bytes that are not an image the model takes: `status` is the HTTP status a service answers with
    (413: too many pixels, 415: not an allowed format or mode, 422: recognised but undecodable)."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.reason, self.status = reason, status


def open_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS, formats=IMAGE_FORMATS):
    """Encoded bytes -> a PIL image whose header only is read: its format, mode and size are checked and
    nothing is decompressed yet (a small PNG can declare 100k x 100k pixels). load_image decodes it."""
    import io

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        try:
            im = Image.open(io.BytesIO(bytes(data)), formats=list(formats))
        except Image.DecompressionBombError as exc:  # Pillow's own ceiling (2 x its MAX_IMAGE_PIXELS)
            raise ImageError(f"too many pixels ({exc})", 413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            raise ImageError(f"not a {' or '.join(formats)} image", 415) from None
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}", 413)
    if im.mode not in CONVERTIBLE_MODES:
        raise ImageError(f"{im.format} mode {im.mode} is not supported (8-bit grey, palette, RGB or RGBA)", 415)
    return im


def load_image(im):
    """An image from open_image, decoded whole: a truncated or corrupt file fails here, not inside a model call."""
    try:
        im.load()
    # A decoder fed hostile bytes can raise nearly anything (OSError for a truncated file, SyntaxError,
    # ValueError, zlib and struct errors); every one means the same to the caller.
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{im.format} image could not be decoded (truncated or corrupt: {str(exc)[:120]})",
                         422) from None
    return im


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS, formats=IMAGE_FORMATS):
    """Encoded bytes -> a decoded PIL image: open_image's checks, then load_image."""
    return load_image(open_image(data, max_pixels, formats))


def check_request_pixels(images: list, budget: int) -> None:
    """The images of one request (opened, not decoded) against its pixel budget: decoding costs about
    the pixels it produces, so the sum of width x height is what bounds a request's decoding work
    (63 black 4096x4096 PNGs fit in 1 MB and took 3.7 s of CPU to decode)."""
    total = sum(im.size[0] * im.size[1] for im in images)
    if total > budget:
        raise ImageError(f"the images hold {total} pixels (width x height, summed); the limit is {budget} "
                         "per request (max_request_pixels): send fewer or smaller images per request", 413)


def to_mode(im, mode: str):
    """A PIL image in `mode` ("L" or "RGB"). Transparent pixels are composited over black first (a plain
    convert would keep the colour under a fully transparent pixel)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return im if im.mode == mode else im.convert(mode)


class ImagePreprocessing:
    """Images -> `pixel_values` (n, channels, height, width) float32, by a transformers image-processor
    config: convert to the model's mode (1 channel: "L", 3: "RGB"), resize to `size` (Pillow, `resample`),
    x * rescale_factor (float64, then float32), (x - mean) / std (float32). Inputs are encoded bytes
    (decode_image: PNG or JPEG, at most MAX_IMAGE_PIXELS), PIL images or uint8 arrays (H, W) / (H, W, C)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.height, self.width = spec["size"]["height"], spec["size"]["width"]
        channels = len(spec["image_mean"])
        if channels not in (1, 3):
            raise ValueError(f"{IMAGE_PROCESSOR}: image_mean has {channels} values; images have 1 or 3 channels")
        self.mode = "L" if channels == 1 else "RGB"
        self.mean = np.array(spec["image_mean"], dtype=np.float32)
        self.std = np.array(spec["image_std"], dtype=np.float32)

    @classmethod
    def load(cls, path: Path) -> ImagePreprocessing:
        return cls(json.loads(Path(path).read_text()))

    def blank(self) -> np.ndarray:
        shape = (self.height, self.width) if self.mode == "L" else (self.height, self.width, 3)
        return np.zeros(shape, dtype=np.uint8)

    def pixels(self, image) -> np.ndarray:
        """One image as uint8 (H, W) or (H, W, 3) in the model's mode and size: what is normalised."""
        from PIL import Image

        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise ImageError(f"expected uint8 pixels (H, W) or (H, W, 1|3|4), got {image.dtype} {image.shape}")
            image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        elif not isinstance(image, Image.Image):
            raise ImageError(f"expected image bytes, a PIL image or uint8 pixels, got {type(image).__name__}")
        image = to_mode(image, self.mode)
        if self.spec.get("do_resize", True) and image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), resample=self.spec.get("resample", 2))
        return np.asarray(image, dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W[, C]) -> float32 (n, C, H, W), as transformers' rescale and normalize compute it."""
        x = pixels if pixels.ndim == 4 else pixels[..., None]
        if self.spec.get("do_rescale", True):
            x = (x.astype(np.float64) * self.spec.get("rescale_factor", 1 / 255)).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.spec.get("do_normalize", True):
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def transform(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.mean), self.height, self.width), dtype=np.float32)
        return self.normalise(np.stack([self.pixels(im) for im in images]))
class PromptTooLong(ValueError):
    """A prompt with no room to generate in the model's context."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"the prompt has {tokens} tokens; the model's context is {limit} tokens (prompt and "
                         f"generated tokens together), so a prompt may have at most {limit - 1}")
        self.tokens, self.limit = tokens, limit


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
