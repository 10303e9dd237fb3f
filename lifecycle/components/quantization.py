"""Quantization rungs: what a rung is (a method plus its settings), how onnxruntime builds it, and how
fast it is against the fp32 graph it came from. Shared by the quantize stage and benchmarks/quantize.py;
the per-node sensitivity scan and selective fallback live in components/sensitivity.py.

Methods:
- `dynamic-int8`: int8 weights (per-channel by default), activations quantized at run time. No data.
- `static-int8`: QDQ graph, activation ranges calibrated on texts from train or validation (never test).
  Only the ops whose QDQ form onnxruntime runs as an integer kernel (STATIC_OPS); a fused graph's
  Attention and EmbedLayerNormalization have no QDQ form and stay fp32 (so on MiniLM static int8 is
  larger and slower than dynamic int8, whose QAttention/QEmbedLayerNormalization take them).
- `int4`: weight-only, block-wise 4-bit MatMul weights and embedding tables (onnxruntime's MatMulNBits
  and GatherBlockQuantized; accuracy_level: the precision MatMulNBits computes in); what neither takes
  (a fused graph's attention and EmbedLayerNormalization) is dynamic int8. For size-bound edge builds:
  int4 pays in size, rarely in speed on a CPU. Give it an unfused export (`optimize: false`): MiniLM's
  vocabulary is half its weights, and inside EmbedLayerNormalization it stays int8 (0.22x of fp32 with
  the fused graph, 0.16x with the plain one; pipelines/minilm_quantize.yaml).
- `block-int8`: `int4`'s method at 8 bits: block-wise int8 MatMul weights (MatMulNBits, activations quantized
  inside the kernel at accuracy_level 4), what onnxruntime-genai's model builder calls int8. On a decoder
  step (batch 1, one token) its kernel beats dynamic int8's DynamicQuantizeMatMul + MatMulIntegerToFloat
  pair (benchmarks/generation.py's op profiles); on a long batch dynamic int8's integer GEMMs are faster.
- `fp16`: half-precision weights, float32 inputs and outputs; for GPU targets.
- `none`: the parent model unchanged.

u8s8: both int8 methods quantize activations to uint8 and weights to int8. On x86 CPUs without VNNI,
onnxruntime's u8s8 kernels sum pairs of products in int16 (vpmaddubsw) and can saturate, so the same
graph can answer differently on a CPU with VNNI and one without; `reduce_range` (7-bit weights) avoids
the saturation at some cost in accuracy. schema.json records the numerics (`int8`), the manifest the
CPU's ISA flags, and lifecycle.edge warns when a graph runs on a CPU that differs in VNNI from the one
it was gated on.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle.schema import Strict

Method = Literal["dynamic-int8", "static-int8", "int4", "block-int8", "fp16", "none"]
INT8 = ("dynamic-int8", "static-int8", "int4", "block-int8")  # graphs with u8s8 int8 kernels (int4 keeps some int8)
BLOCKWISE = {"int4": 4, "block-int8": 8}  # MatMulNBits methods: their weights' bits
# Static int8 quantizes these op types only: onnxruntime turns their QDQ form into QLinearMatMul / QGemm /
# QLinearConv. Around every other op (Add, LayerNormalization, Gather, Transpose...) Q/DQ pairs only add work:
# static int8 of every QDQ op type was 1.65x slower than dynamic int8 on MiniLM at batch 1 (benchmarks/results/
# quantize.json at 1c4cd9d), with these three 1.42x on a Xeon with VNNI (at 66e7f2e) and 1.23x on an AVX2-only
# EPYC (the current file, whose op_profiles_b1 say where it goes: attention stays fp32 in static int8).
STATIC_OPS = ("Conv", "Gemm", "MatMul")
INT4_OPSET = 21  # the ai.onnx opset onnxruntime's MatMulNBitsQuantizer gives a graph whose Gather it quantizes


class Calibration(Strict):
    """Data for static int8: texts from a split of the task data, fed one at a time (no padding)."""

    split: Literal["train", "validation"] = "train"  # never test: calibrating on it leaks into the score
    samples: int = Field(128, gt=0)  # more samples: steadier ranges, slower calibration
    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # entropy/percentile clip outliers, cost memory


class Rung(Strict):
    """One rung of the ladder: a method and the settings it overrides (None: the stage's). In YAML either
    a method name (`dynamic-int8`) or a mapping (`{method: static-int8, calibration: {method: entropy,
    samples: 512}}`), so one ladder can try several calibrations in order of cost."""

    method: Method
    calibration: Calibration | None = None  # static-int8 only
    per_channel: bool | None = None  # int8 weights: one scale per output channel
    reduce_range: bool | None = None  # int8: 7-bit weights (u8s8 without VNNI)
    block_size: int = Field(32, ge=16)  # int4, block-int8: weights per scale; smaller is closer to fp32 and larger
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4  # int4, block-int8: MatMulNBits compute type (4: int8 activations, fastest on CPU)

    @property
    def label(self) -> str:
        """The rung's name in attempts and reports: the method, plus what it overrides."""
        parts = [self.method]
        if self.calibration is not None:
            parts += [self.calibration.method, str(self.calibration.samples)]
            parts += ["validation"] if self.calibration.split == "validation" else []
        parts += ["per-tensor"] if self.per_channel is False else []
        parts += ["per-channel"] if self.per_channel is True else []
        parts += ["7bit"] if self.reduce_range else []
        if self.method in BLOCKWISE and (self.block_size, self.accuracy_level) != (32, 4):
            parts += [f"b{self.block_size}", f"acc{self.accuracy_level}"]
        return "-".join(parts)


class Settings(Strict):
    """What a rung is built with once its overrides are applied to the stage's settings."""

    method: Method
    per_channel: bool = True
    reduce_range: bool = False
    calibration: Calibration = Calibration()
    exclude_op_types: list[str] = []
    exclude_nodes: list[str] = []
    block_size: int = 32
    accuracy_level: int = 4


# ----------------------------------------------------------------------------------------- building
def build(settings: Settings, src: Path, out: Path, feeds: list[dict] | None = None, work: Path | None = None,
          exclude_nodes: list[str] | None = None) -> None:
    """Write the rung's model.onnx plus the parent's runtime files to `out`; schema.json notes the method
    (`weights`) and, for int8 graphs, the numerics (`int8`). `feeds`: static-int8's calibration inputs
    (`calibration_inputs`); `work`: scratch space for the pre-processed graph (kept there for the
    sensitivity scan and later trials); `exclude_nodes`: more nodes left in float."""
    import json

    from lifecycle.components.onnx import copy_runtime_files

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_runtime_files(src, out)
    schema = {**json.loads((out / "schema.json").read_text()), "weights": settings.method}
    if settings.method in INT8:
        schema["int8"] = {"activations": "uint8", "weights": "int8", "reduce_range": settings.reduce_range}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    model_in, model_out = src / "model.onnx", out / "model.onnx"
    with quiet_quantizers():
        if settings.method == "none":
            shutil.copy2(model_in, model_out)
        elif settings.method == "dynamic-int8":
            with weights_folded(model_in, out) as graph:
                dynamic_int8(settings, graph, model_out)
        elif settings.method == "static-int8":
            pre = preprocessed(model_in, (work or out) / "preprocessed.onnx")
            try:
                static_int8(settings, pre, model_out, feeds, exclude_nodes)
            finally:
                if work is None:
                    pre.unlink(missing_ok=True)
        elif settings.method in BLOCKWISE:
            with weights_folded(model_in, out) as graph:
                blockwise(settings, graph, model_out)
        elif settings.method == "fp16":
            fp16(settings, model_in, model_out)


@contextlib.contextmanager
def weights_folded(model_in: Path, scratch: Path):
    """`model_in`, or a copy of it in `scratch` (removed afterwards) in which every Transpose of an
    initializer that only MatMuls read as their weight is replaced by the transposed initializer.

    torch.onnx writes a tied LM head (GPT-2's lm_head shares the token embedding) as
    MatMul(hidden, Transpose(wte)). onnxruntime folds that constant when a session starts, but the
    quantizers only quantize a MatMul whose weight is an initializer, so they left the largest matrix of a
    decoder (hidden x vocabulary) in float: a third of an int8 GPT-2 small step was that one fp32 MatMul
    (benchmarks/generation.py's op profile). Folded, the head is quantized like every other projection; the
    embedding table stays as it is for the lookups, so the graph holds the table twice (once transposed)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_in))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in graph.output}
    folded = []
    for node in list(graph.node):
        uses = readers.get(node.output[0], []) if node.op_type == "Transpose" else []
        if (not uses or node.input[0] not in inits or node.output[0] in outputs
                or any(user.op_type != "MatMul" or k != 1 for user, k in uses)):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), node.output[0]))
        graph.node.remove(node)
        folded.append(node.input[0])
    for name in folded:  # a table nothing else reads (an untied head) is not kept twice
        if len(readers[name]) == 1:
            graph.initializer.remove(inits[name])
    if not folded:
        yield model_in
        return
    path = Path(scratch) / "weights-folded.onnx"
    onnx.save(model, str(path))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_quantizers():
    """Drop onnxruntime's warnings and info while a rung is built, and nothing else.

    The quantizers log a warning per tensor they cannot type (fused contrib ops): noise for a user. They
    log through the module-level `logging.warning(...)`, i.e. on the root logger itself rather than a
    named logger, so no logger level of theirs can be lowered. A filter on the root logger sees only
    records logged on it directly (not those propagated from named loggers); this one drops those that
    come from onnxruntime's files below ERROR, leaves every other record and the root's level alone,
    and is removed on the way out. onnxruntime's named loggers (onnxruntime.*) get level ERROR for the
    same span, restored afterwards.
    """
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root, named = logging.getLogger(), logging.getLogger("onnxruntime")
    level = named.level
    root.addFilter(keep)
    named.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(keep)
        named.setLevel(level)


def _common(settings: Settings, registry: dict, exclude_nodes: list[str] | None = None) -> dict:
    import onnx

    from lifecycle import LifecycleError

    ops = sorted(set(registry) - set(settings.exclude_op_types))  # the op types to quantize, minus the excluded
    if not ops:  # an empty list means "all op types" to onnxruntime: the opposite of what was asked
        raise LifecycleError(f"quantize.exclude_op_types excludes every op type the quantizer knows "
                             f"({sorted(registry)}); use method none instead")
    nodes = [*settings.exclude_nodes, *(exclude_nodes or [])]
    # DefaultTensorType: a fused graph has contrib ops whose output types onnx shape inference does
    # not know; without a default the quantizer fails on them.
    return {"per_channel": settings.per_channel, "reduce_range": settings.reduce_range, "op_types_to_quantize": ops,
            "nodes_to_exclude": nodes or None, "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT}}


def dynamic_int8(settings: Settings, model_in: Path, model_out: Path, op_types: list[str] | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    kwargs = _common(settings, IntegerOpsRegistry)
    if op_types is not None:
        kwargs["op_types_to_quantize"] = [o for o in op_types if o not in settings.exclude_op_types]
    quantize_dynamic(str(model_in), str(model_out), weight_type=QuantType.QInt8, **kwargs)


def calibration_inputs(encoder, texts: list[str], method: str) -> list[dict]:
    """Feeds for calibration: one text per feed. The histogram calibrators (entropy, percentile) stack
    activations across samples, so every sample must have the same shape: those are padded to
    max_length; min/max sees each text as it is."""
    pad_to = None if method == "minmax" else encoder.max_length
    return [encoder.encode([t], pad_to=pad_to) for t in texts]


def calibration_texts(split_texts, samples: int, seed: int) -> list[str]:
    """`samples` texts drawn (seeded) from a split."""
    texts = list(split_texts)
    return random.Random(seed).sample(texts, min(samples, len(texts)))


def static_int8(settings: Settings, pre: Path, model_out: Path, feeds: list[dict],
                exclude_nodes: list[str] | None = None) -> None:
    """QDQ static int8 of the pre-processed graph `pre` (see `preprocessed`), calibrated on `feeds`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    reader = iter(feeds)

    class Reader:  # onnxruntime's CalibrationDataReader protocol
        def get_next(self):
            return next(reader, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.calibration.method]
    quantize_static(str(pre), str(model_out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    **_common(settings, {op: QDQRegistry[op] for op in STATIC_OPS}, exclude_nodes))


PRE_PROCESS = """
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
try:
    quant_pre_process(sys.argv[1], sys.argv[2])
except Exception:
    quant_pre_process(sys.argv[1], sys.argv[2], skip_symbolic_shape=True)
"""


def preprocessed(model_in: Path, model_out: Path) -> Path:
    """onnxruntime's quant_pre_process, the graph static int8 quantizes (node names for nodes_to_exclude
    are this graph's).

    A fused graph needs onnxruntime's symbolic shape inference (onnx's own does not type the contrib ops,
    and the quantizer then fails on the pooler); the plain TorchScript export makes that inference fail
    ("Incomplete symbolic shape inference") and needs onnx's only. When symbolic inference fails it dumps
    sym_shape_infer_temp.onnx (+ external data) into the working directory: so it runs in a child process
    whose working directory is the folder of `model_out` (scratch space), and neither the user's
    directory nor this process's working directory is touched. An existing `model_out` is reused."""
    import subprocess
    import sys

    from lifecycle import LifecycleError

    if model_out.is_file():
        return model_out
    cwd = model_out.parent
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", PRE_PROCESS, str(model_in.resolve()), str(model_out.resolve())],
                          cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LifecycleError(f"quantize: onnxruntime's quant_pre_process failed on {model_in}: {tail}")
    return model_out


def blockwise(settings: Settings, model_in: Path, model_out: Path) -> None:
    """Block-wise int4 (or, for block-int8, int8) MatMul weights (MatMulNBits) and embedding tables
    (GatherBlockQuantized, blocks along the hidden axis), then dynamic int8 for the fused attention and
    embedding ops neither takes (without it a fused MiniLM keeps ~60% of its fp32 bytes)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Quantizing Gather makes the quantizer stamp ai.onnx opset 21 on the graph without rewriting a node,
    # and ops whose form changed since (ReduceMean's axes, an input from opset 18: RMSNorm) no longer
    # load. So the graph is converted to that opset first.
    model = onnx.load(str(model_in))
    if default_opset(model) < INT4_OPSET:
        model = onnx.version_converter.convert_version(model, INT4_OPSET)
    quantizer = MatMulNBitsQuantizer(model, bits=BLOCKWISE[settings.method], block_size=settings.block_size,
                                     is_symmetric=True, accuracy_level=settings.accuracy_level or None,
                                     nodes_to_exclude=settings.exclude_nodes, op_types_to_quantize=("MatMul", "Gather"))
    # A block of all-zero weights has scale 0: the quantizer divides by it before np.where picks 0 for
    # that block, and numpy warns of the NaN it throws away.
    with np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()
    half = model_out.with_name("blockwise-matmul.onnx")
    quantizer.model.save_model_to_file(str(half), use_external_data_format=False)
    try:
        dynamic_int8(settings, half, model_out,
                     op_types=["Attention", "EmbedLayerNormalization", "Gather", "MultiHeadAttention"])
    finally:
        half.unlink(missing_ok=True)


def default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def fp16(settings: Settings, model_in: Path, model_out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(model_in)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *settings.exclude_op_types],
                                     node_block_list=settings.exclude_nodes or None)
    onnx.save(model, str(model_out))


# ------------------------------------------------------------------------------------------- speed
def speedup(candidate, reference, text: str, batch: int, seq: int, calls: int, min_speedup: float | None) -> dict:
    """fp32 p50 / candidate p50 at `batch`, both onnxruntime predictors timed in alternating rounds in this
    process on the same padded input (lifecycle.evaluation.latency.ab_ratio), with its 95% interval."""
    from lifecycle.evaluation.latency import ab_ratio

    feeds = candidate.encode([text] * batch, pad_to=seq)
    ab = ab_ratio(lambda: candidate.session.run(None, feeds), lambda: reference.session.run(None, feeds),
                  1.0 / (min_speedup or 1.0), "max_ratio", rounds=6, max_rounds=12, calls=calls, warmup=2)
    lo, hi = ab["interval"]
    return {"speedup": 1.0 / ab["ratio"], "interval": [1.0 / hi, 1.0 / lo], "batch_size": batch,
            "candidate_ms": ab["candidate_ms"], "fp32_ms": ab["reference_ms"], "rounds": ab["rounds"],
            "calls_per_round": calls, "load_before": ab["load_before"], "load_after": ab["load_after"]}


def speed_words(method: str, speed: dict) -> str:
    """'int8 was 1.6x slower at batch 1' / '2.1x faster at batch 32' for a report."""
    s, batch = speed["speedup"], speed["batch_size"]
    kind = {"dynamic-int8": "int8", "static-int8": "int8"}.get(method, method)
    if s >= 1:
        return f"{kind} was {s:.2f}x faster than fp32 at batch {batch}"
    return f"{kind} was {1 / s:.2f}x slower than fp32 at batch {batch}"
