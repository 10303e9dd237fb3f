"""quantize: onnx-model -> onnx-model with onnxruntime quantization, tried as a ladder of methods.

Methods (rungs):
- `dynamic-int8` (default): int8 weights, activations quantized at run time. Needs no data.
  Per-channel weights by default: on MiniLM it agrees with fp32 far better than per-tensor at the
  same size and speed (benchmarks/quantize.py measures both).
- `static-int8`: QDQ graph, activation ranges calibrated on `calibration.samples` texts drawn
  (seeded) from the training split. Often faster than dynamic, often less accurate on transformers.
- `fp16`: half-precision weights, float32 inputs and outputs; meant for GPU targets (evaluated on
  CUDA when onnxruntime has it, else on CPU where fused contrib ops may have no fp16 kernel: such
  a rung is recorded as failed).
- `none`: the parent model unchanged: a last rung that always exists.

`fallback: [static-int8, dynamic-int8, none]` is the whole ladder: each rung is built, evaluated
(accuracy/F1 on the full test split, latency at batch 1 and 32, size) and checked against this
stage's gates; the first rung that passes is written. Every attempt, with its metrics and gate
verdicts, goes into the manifest (`details.attempts`). When no rung passes, the last rung that ran
is written and its metrics returned, so the pipeline's own gate check fails the stage (exit 3) with
the artifact and every attempt on disk to inspect; a rung that cannot be built or run (say fp16 on a
CPU without the kernels) is recorded with its error, and only when every rung errored does the stage
raise.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, computed_field, model_validator

from lifecycle import tasks
from lifecycle.components.onnx import ONNX_METRICS, OnnxLatency
from lifecycle.schema import Holds, StageBase, Strict, TaskType

Method = Literal["dynamic-int8", "static-int8", "fp16", "none"]


class Calibration(Strict):
    """Data for static int8: texts from a split of the task data, fed one at a time (no padding)."""

    split: Literal["train", "validation"] = "train"  # never test: calibrating on it leaks into the score
    samples: int = Field(128, gt=0)  # more samples: steadier ranges, slower calibration
    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # entropy/percentile clip outliers, cost memory


class Config(StageBase):
    kind: Literal["quantize"]
    tasks = tuple(tasks.REGISTRY)
    method: Method | None = None  # the single rung when `fallback` is empty; None: dynamic-int8
    fallback: list[Method] = Field([], description="the whole ladder, tried in order, e.g. [static-int8, dynamic-int8, none]")
    per_channel: bool = True  # int8 weights scaled per output channel: closer to fp32, same size and speed
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on CPUs without VNNI, costs accuracy
    calibration: Calibration = Calibration()
    exclude_op_types: list[str] = []  # op types left in float, e.g. [Gather] keeps embeddings fp32
    exclude_nodes: list[str] = []  # node names left in float (names as in model.onnx)
    latency: OnnxLatency = OnnxLatency()

    @model_validator(mode="after")
    def _ladder(self) -> Config:
        if self.fallback and self.method is not None and self.method != self.fallback[0]:
            raise ValueError(f"fallback is the whole ladder; it starts with {self.fallback[0]}, not method "
                             f"{self.method}: drop `method` or list it first")
        if len(set(self.fallback)) != len(self.fallback):
            raise ValueError("fallback lists a method twice")
        return self

    @property
    def ladder(self) -> list[str]:
        return list(self.fallback) or [self.method or "dynamic-int8"]

    # The pipeline leaves `gates` out of a stage's cache key (they only judge an artifact), but on a
    # ladder they pick which rung is written: so they enter the key (and the dumped config) through
    # this derived field, which is dropped again when a dumped config is read back.
    @computed_field
    @property
    def ladder_gates(self) -> list[dict]:
        return [g.model_dump(mode="json") for g in self.gates] if len(self.ladder) > 1 else []

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data):
        return {k: v for k, v in data.items() if k != "ladder_gates"} if isinstance(data, dict) else data

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return (tasks.get(task).onnx_holds,)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return tasks.get(task).onnx_holds  # the same model, in int8

    def metric_names(self) -> set[str]:
        # the task's scores and fidelity to the fp32 parent, on test and (val_*) on validation
        return {*ONNX_METRICS, *(m for t in tasks.REGISTRY.values() for m in t.metrics)}


def run(cfg: Config, parent, ctx) -> dict:
    from lifecycle import LifecycleError
    from lifecycle import gates as gatelib
    from lifecycle.components.onnx import onnx_latency
    from lifecycle.edge import Predictor

    task = tasks.get(ctx.pipeline.task.type)
    max_length = ctx.pipeline.task.max_length
    splits = ctx.task_data().splits
    fp32 = Predictor.open(parent.path)
    # Rungs are judged on validation and test is scored once, on the rung kept: choosing by test scores
    # would make the reported test score the best of several looks at it.
    reference = {split: fp32.logits(splits[split]["text"]) for split in ("validation", "test")}  # fp32 outputs
    attempts, built = [], None
    for method in cfg.ladder:
        rung_dir = ctx.scratch_dir / method
        try:
            build(method, cfg, Path(parent.path), rung_dir, ctx)
            predictor = Predictor.open(rung_dir, threads=cfg.latency.threads)
            metrics, _ = task.score(predictor, splits["validation"], ctx.pipeline, "validation", reference["validation"])
            metrics.update(onnx_latency(predictor, splits["test"]["text"][0], cfg.latency, max_length))
        except Exception as exc:  # a rung that cannot be built or run is a failed attempt, not a crash
            attempts.append({"method": method, "error": f"{type(exc).__name__}: {exc}", "passed": False})
            ctx.echo(f"   rung {method}: failed ({type(exc).__name__}: {exc})")
            continue
        results = ctx.check_gates(metrics, split="validation")
        passed = not gatelib.blocking(results)
        attempts.append({"method": method, "split": "validation", "metrics": metrics,
                         "gates": [r.to_dict() for r in results], "passed": passed})
        score = task.scores[0]
        ctx.echo(f"   rung {method}: validation {score} {metrics[score]:.4f}, p50 {metrics['ort_latency_p50_ms']:.2f} ms, "
                 f"{metrics['size_mb']:.2f} MB: {'passes' if passed else 'misses'} the gates")
        built = (method, rung_dir, predictor, metrics)
        if passed:
            break
    ctx.details["attempts"] = attempts
    if built is None:
        raise LifecycleError("quantize: every rung failed: " + "; ".join(f"{a['method']}: {a['error']}" for a in attempts))
    method, rung_dir, predictor, chosen = built
    test = splits["test"]
    metrics, outputs = task.score(predictor, test, ctx.pipeline, "test", reference["test"], ctx.out_dir)
    metrics.update({k: v for k, v in chosen.items() if k not in gatelib.SPLIT_SCORES})  # latency, size
    metrics.update({f"val_{k}": v for k, v in chosen.items() if k in gatelib.SPLIT_SCORES})
    ctx.details.update(method=method, passed=attempts[-1]["passed"], **task.prediction_details(predictor, test, outputs))
    for f in rung_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, ctx.out_dir / f.name)
    return metrics


# ---------------------------------------------------------------------------------------- rungs
def build(method: str, cfg: Config, src: Path, out: Path, ctx) -> None:
    """Write the rung's model.onnx plus the parent's runtime files (schema notes the method) to out."""
    import json

    from lifecycle.components.onnx import copy_runtime_files

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_runtime_files(src, out)
    schema = json.loads((out / "schema.json").read_text())
    (out / "schema.json").write_text(json.dumps({**schema, "weights": method}, indent=2))
    model_in, model_out = src / "model.onnx", out / "model.onnx"
    with _quiet_quantizers():
        if method == "none":
            shutil.copy2(model_in, model_out)
        elif method == "dynamic-int8":
            dynamic_int8(cfg, model_in, model_out)
        elif method == "static-int8":
            static_int8(cfg, model_in, model_out, ctx)
        elif method == "fp16":
            fp16(cfg, model_in, model_out)


@contextlib.contextmanager
def _quiet_quantizers():
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


def _common(cfg: Config, registry: dict) -> dict:
    import onnx

    from lifecycle import LifecycleError

    ops = None
    if cfg.exclude_op_types:  # the op types the quantizer knows, minus the excluded ones
        ops = sorted(set(registry) - set(cfg.exclude_op_types))
        if not ops:  # an empty list means "all op types" to onnxruntime: the opposite of what was asked
            raise LifecycleError(f"quantize.exclude_op_types excludes every op type the quantizer knows "
                                 f"({sorted(registry)}); use method none instead")
    # DefaultTensorType: a fused graph has contrib ops whose output types onnx shape inference does
    # not know; without a default the quantizer fails on them.
    return {"per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range, "op_types_to_quantize": ops,
            "nodes_to_exclude": cfg.exclude_nodes or None,
            "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT}}


def dynamic_int8(cfg: Config, model_in: Path, model_out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    quantize_dynamic(str(model_in), str(model_out), weight_type=QuantType.QInt8, **_common(cfg, IntegerOpsRegistry))


def static_int8(cfg: Config, model_in: Path, model_out: Path, ctx) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    from lifecycle.edge import Predictor

    pre = model_out.with_name("preprocessed.onnx")
    # A fused graph needs onnxruntime's symbolic shape inference (onnx's own does not type the
    # contrib ops, and the quantizer then fails on the pooler); the plain TorchScript export makes
    # that inference fail ("Incomplete symbolic shape inference") and needs onnx's only.
    # When symbolic inference fails it dumps sym_shape_infer_temp.onnx (+ external data) into the working
    # directory: it runs in a child process whose working directory is the stage's scratch directory, so
    # neither the user's directory nor this process's working directory is touched.
    _pre_process(model_in.resolve(), pre.resolve(), ctx.scratch_dir)
    texts = list(ctx.task_data().splits[cfg.calibration.split]["text"])
    texts = random.Random(ctx.seed).sample(texts, min(cfg.calibration.samples, len(texts)))
    encoder = Predictor.open(model_in.parent)
    # The histogram calibrators (entropy, percentile) stack activations across samples, so every
    # sample must have the same shape: pad those to max_length; min/max sees each text as it is.
    pad_to = None if cfg.calibration.method == "minmax" else encoder.max_length
    reader = iter([encoder.encode([t], pad_to=pad_to) for t in texts])

    class Reader:  # onnxruntime's CalibrationDataReader protocol
        def get_next(self):
            return next(reader, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration.method]
    try:
        quantize_static(str(pre), str(model_out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        **_common(cfg, QDQRegistry))
    finally:
        pre.unlink(missing_ok=True)


PRE_PROCESS = """
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
try:
    quant_pre_process(sys.argv[1], sys.argv[2])
except Exception:
    quant_pre_process(sys.argv[1], sys.argv[2], skip_symbolic_shape=True)
"""


def _pre_process(model_in: Path, model_out: Path, cwd: Path) -> None:
    """onnxruntime's quant_pre_process (symbolic shape inference, else onnx's only) run with `cwd` as the
    working directory (see static_int8)."""
    import subprocess
    import sys

    from lifecycle import LifecycleError

    done = subprocess.run([sys.executable, "-c", PRE_PROCESS, str(model_in), str(model_out)], cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LifecycleError(f"quantize: onnxruntime's quant_pre_process failed on {model_in}: {tail}")


def fp16(cfg: Config, model_in: Path, model_out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(model_in)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *cfg.exclude_op_types],
                                     node_block_list=cfg.exclude_nodes or None)
    onnx.save(model, str(model_out))
