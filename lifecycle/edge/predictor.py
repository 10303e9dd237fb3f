"""Predictor: a model opened from a bundle zip or an export/quantize artifact directory (verified first),
its onnxruntime session, dispatching on the inputs and answers kinds schema.json names (else its task's,
lifecycle.edge.answers.KINDS) through one inputs object and one answer function (lifecycle.edge.kinds).

A text's answer does not depend on what it is batched with (see Predictor.logits): texts are never
padded, and a graph that quantizes activations at run time gets one text per call."""

from __future__ import annotations

import json
import shutil
import warnings
import weakref
import zipfile
from pathlib import Path

import numpy as np

from . import decoding
from .answers import KINDS, difference
from .bundle import (
    LABELS,
    MANIFEST,
    MODEL,
    SCHEMA,
    SIGNATURE,
    BundleError,
    _read_schema,
    required_files,
    verify,
)
from .cpu import cpu_flags, int8_isa_warning
from .extraction import _extract
from .kinds import answers_kind, inputs_kind
from .onnx_graph import check_external_data, op_types
from .signature import check_signature
from .text_inputs import padded_feeds, token_counts

# Ops that quantize activations with a scale computed at run time over the whole input tensor: in such
# a graph every text in a batch (and every padding token) moves the scale, so co-batched texts change
# each other's scores (see Predictor.logits). QAttention / MatMulIntegerToFloat are fed by
# DynamicQuantizeLinear in such graphs; the Dynamic* contrib ops are what onnxruntime fuses it into.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


class Predictor:
    """An exported model (bundle zip or export/quantize artifact) verified and ready to answer: `Predictor.open`."""

    def __init__(self, root: Path, threads: int | None = None, spinning: bool = True, profile: str | None = None,
                 spin_between_runs: bool = False):
        import onnxruntime as ort

        self.root = Path(root)
        self.manifest: dict | None = None  # set by open() when the source has a manifest
        self.isa_warning: str | None = None  # set by open(): see int8_isa_warning
        self.schema = json.loads((self.root / SCHEMA).read_text())
        self.labels: list[str] = json.loads((self.root / LABELS).read_text())
        self.inputs_kind, self.answers_kind = _kinds(self.schema, self.root / SCHEMA)
        # What turns raw input into the graph's feeds and batches it (lifecycle.edge.kinds), and its
        # preprocessor as callers read it: a tokenizer for texts and prompts, TablePreprocessing for rows,
        # ImagePreprocessing for images (None where it does not apply). Rows and images have no length.
        self.inputs = inputs_kind(self.inputs_kind, self.root / SCHEMA)(self.root, self.schema)
        self._answer_of = answers_kind(self.answers_kind, self.root / SCHEMA)
        self.tokenizer, self.table, self.image = (getattr(self.inputs, k, None) for k in ("tokenizer", "table", "image"))
        self.max_length: int = self.inputs.max_length
        self.pad_id: int = self.schema.get("pad_token_id") or 0
        check_external_data(self.root / MODEL)
        # True: one text per session call (see logits); found by scanning the graph, not the schema's
        # "weights" note, so a graph quantized elsewhere is caught too.
        ops = op_types(self.root / MODEL)
        self.batch_dependent = bool(ops & BATCH_DEPENDENT_OPS)
        # A decoder whose attention reads and writes its KV cache in place (lifecycle.edge.decoding.SharedCache)
        self.shared_cache = "GroupQueryAttention" in ops
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
        return self.inputs.sample()

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
            for name in required_files(_read_schema(path)):
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
        return self.inputs.feeds(self, texts, pad_to)

    def _feeds(self, encs: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        feeds = padded_feeds(encs, self.input_names, self.pad_id, pad_to)
        if self.past:  # a decoder run on whole texts: positions from 0 and an empty cache
            length = feeds["input_ids"].shape[1]  # a decoder always takes input_ids
            if "position_ids" in self.input_names:
                feeds["position_ids"] = np.tile(np.arange(length, dtype=np.int64), (len(encs), 1))
            feeds.update(self._empty_past(len(encs)))
        return feeds

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation (for servers that reject over-long input)."""
        return token_counts(self.tokenizer, texts, self.max_length)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The graph's output per input, float32, in input order, batched by the inputs kind (lifecycle.edge.kinds;
        texts: TextInputs.outputs). A text's row is the same whatever it is batched with, so the service (one text or many per request, BentoML's adaptive batches), the
        bundle and the stages give one answer per text:
        - texts are grouped by token count and only equal-length texts share a session call, so no
          text is ever padded: each is computed exactly as it would be alone;
        - a graph with run-time activation scales (BATCH_DEPENDENT_OPS) gets one text per call.
        """
        return self.inputs.outputs(self, texts, batch_size)

    # Generation (a decoder with a KV cache) is its own job, in lifecycle.edge.decoding; its functions take
    # the predictor as `self` and are bound here, so they are called as methods like the rest.
    prompt_ids, generate, stream = decoding.prompt_ids, decoding.generate, decoding.stream
    decoding_speed, continuations, perplexity = decoding.decoding_speed, decoding.continuations, decoding.perplexity
    _empty_past, _fits, _step = decoding._empty_past, decoding._fits, decoding._step
    _continue, _decode = decoding._continue, decoding._decode

    def run_batched(self, name: str, values: np.ndarray, batch_size: int) -> np.ndarray:
        """The graph's output for its one input `name` fed `batch_size` rows at a time (one at a time for a graph
        with run-time activation scales), float32; (0, labels) for no rows. Images and audio clips run here."""
        size = 1 if self.batch_dependent else max(1, batch_size)
        outs = [self.session.run(None, {name: values[i : i + size]})[0] for i in range(0, len(values), size)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings (n, dim), float32: pooling and normalisation are inside the graph."""
        self._only_for("embed")
        return self._answer(texts, batch_size)

    def table_outputs(self, rows: list[dict], batch_size: int = 64) -> tuple[np.ndarray, dict]:
        """(the graph's output per row, what preprocessing counted: missing values, unknown categories,
        out-of-range numbers, extra columns). Rows have no length, so any rows share a call; a graph
        with run-time activation scales still gets one row per call (see logits)."""
        return self.inputs.counted_outputs(self, rows, batch_size)

    def image_outputs(self, images: list, batch_size: int = 64) -> np.ndarray:
        """The graph's output per image (encoded PNG/JPEG bytes, a PIL image or uint8 pixels (H, W[, C])),
        through the model's image preprocessing (ImagePreprocessing). Every image is resized to one size,
        so any images share a call; a graph with run-time activation scales gets one image per call."""
        return self.logits(images, batch_size)

    def classify_images(self, images: list) -> list[dict]:
        """{"label", "score", "scores"} per image (encoded PNG/JPEG bytes or uint8 pixels): an image
        classifier's answer, preprocessing included (ImageError for bytes that are not an allowed image)."""
        self._only_for("classify_images")
        return self._answer(images)

    def embed_images(self, images: list) -> np.ndarray:
        """Embeddings (n, dim), float32, per image (encoded PNG/JPEG bytes or uint8 pixels), preprocessing
        included; pooling and normalisation are inside the graph (ImageError for bytes that are not an
        allowed image)."""
        self._only_for("embed_images")
        return self._answer(images)

    def predict_rows(self, rows: list[dict]) -> list[dict]:
        """{"label", "score", "scores"} per table row (a mapping column -> value; null for a missing
        value): a table classifier's answer from the raw row, preprocessing included."""
        self._only_for("predict_rows")
        return self._answer(rows)

    def score_rows(self, rows: list[dict]) -> list[dict]:
        """{"anomaly_score"} per table row: higher is more anomalous (a masked-feature model's reconstruction error)."""
        self._only_for("score_rows")
        return self._answer(rows)

    def regress_rows(self, rows: list[dict]) -> list[dict]:
        """{"value"} per table row: a table regressor's prediction, in the target's units."""
        self._only_for("regress_rows")
        return self._answer(rows)

    def predict(self, texts: list[str]) -> list[dict]:
        """{"label", "score", "scores"} per text: the softmax of a classifier's logits."""
        self._only_for("predict")
        return self._answer(texts)

    def answer(self, inputs: list) -> list:
        """The answer per input by the model's answers kind, as JSON values: the method a task with no method
        of its own names (a plug-in workload's, lifecycle.edge.kinds). A generator answers generate() instead."""
        if self._answer_of is None:
            self._only_for("answer")
        out = self._answer(inputs)
        return out.tolist() if isinstance(out, np.ndarray) else out

    def _answer(self, inputs: list, batch_size: int = 64):
        """The answer per input, by the model's answers kind (ANSWERS), from the graph's outputs (logits)."""
        return self._answer_of(self.logits(inputs, batch_size), self.labels)

    def check(self, atol: float = 1e-4) -> int:
        """Re-run the sample predictions recorded by the pipeline (in the manifest) and raise
        BundleError if an answer differs: a label or any other string, or a number by more than atol.
        Returns how many matched. A device runs this once after install to prove its runtime
        reproduces the pipeline."""
        m = self.manifest or {}
        expected = m.get("sample_predictions") or m.get("details", {}).get("sample_predictions") or []
        if not expected:
            raise BundleError(f"{self.root}: the manifest records no sample predictions to check")
        inputs = [self.inputs.recorded(e) for e in expected]  # a text, a row, an image as base64 PNG...
        for x, e, got in zip(inputs, expected, self.answers(inputs)):
            where = difference(e["answer"], got, atol)
            if where is not None:
                raise BundleError(f"prediction differs from the pipeline's for {str(x)[:60]!r}: {where}")
        return len(expected)


def _kinds(schema: dict, where: Path) -> tuple[str, str]:
    """(inputs kind, answers kind) as schema.json names them ("inputs_kind", "answers_kind"), else by its task
    (KINDS: a schema.json written before it named them)."""
    named = schema.get("inputs_kind"), schema.get("answers_kind")
    if all(named):
        return named
    task = schema.get("task", "classification")
    if task not in KINDS:
        raise BundleError(f"{where}: task '{task}' is not one this runtime answers ({', '.join(KINDS)}); open it "
                          "with the lifecycle version that wrote it")
    return named[0] or KINDS[task][0], named[1] or KINDS[task][1]
