"""quantize: onnx-model -> onnx-model with onnxruntime quantization, tried as a ladder of rungs.

A rung is a method (dynamic-int8, static-int8, int4, block-int8, fp16, none; see components/quantization.py) or a
method with its own settings (`{method: static-int8, calibration: {method: entropy, samples: 512}}`).
`fallback: [static-int8, dynamic-int8, none]` is the whole ladder: each rung is built, evaluated on
validation (the task's scores and fidelity to the fp32 parent, latency at batch 1 and 32, size, and its
speed against the fp32 parent) and checked against this stage's gates; the first rung that passes is
written, and test is scored once, on it. Every attempt, side by side, goes into the manifest
(`details.attempts`) and the report (`details.summary`), with the reason the kept rung was kept.

Speed is a gate like any other: with `min_speedup` (default 1.0) a rung must be at least that much
faster than the fp32 parent at batch 1 and at `served_batch`, both timed in alternating rounds in
this process (`speedup`, `speedup_served`, with their 95% intervals `_ci_low` / `_ci_high`). On a small
model int8 is often slower than fp32 on a CPU (the quantize/dequantize work does not pay for itself):
then `none`, the parent unchanged, is the right rung to keep, and the report says why (e.g. "int8 was
1.6x slower than fp32 at batch 1"). The gate reads the interval, not the point: a rung whose interval
straddles `min_speedup` is within noise of it, and `when_inconclusive` says what wins then: `smaller`
(default: the rung passes, being smaller at no demonstrable cost in speed), `faster` (the point estimate
decides) or `parent` (the rung misses; the ladder moves on, to `none` if it is listed). The report marks
each such verdict.

Static int8 that misses a gate on a score gets a per-node sensitivity scan and a greedy selective
fallback (components/sensitivity.py): the worst nodes stay in float until the gates on scores pass,
within `selective_fallback.trials` (then the search stops: more float nodes cannot help size or speed,
so a trial that misses those gates is reported with the nodes that fixed the scores, `scores_fixed_by`);
the attribution table goes into the manifest and the report. When no
rung passes, the closest candidate (fewest blocking misses, then the smallest shortfall) is written and
the report names it and by how much each gate missed; the pipeline's own gate check then fails the
stage (exit 3) with the artifact and every attempt on disk to inspect. A rung that cannot be built or
run (fp16 on a CPU without the kernels) is recorded with its error; only when every rung errored
does the stage raise.

This module is the stage (its config and run); the ladder that builds and judges the rungs, and the
reasons it writes, are in `ladder.py` beside it; the rung builders and the sensitivity scan are components.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, computed_field, model_validator

from lifecycle import workloads
from lifecycle.components.onnx import ONNX_METRICS, OnnxLatency
from lifecycle.components.quantization import Calibration, Method, Rung, Settings
from lifecycle.components.sensitivity import SelectiveFallback
from lifecycle.schema import Gate, Holds, StageBase, TaskType
from lifecycle.stages.quantize.ladder import SPEED_METRICS, Ladder, closeness, explain
from lifecycle.tasks import Scoring

# when_inconclusive -> the bound of the speedup's interval its gate reads (Gate.bound)
SPEED_BOUND = {"smaller": "upper_ci", "faster": "mean", "parent": "lower_ci"}


class Config(StageBase):
    """The `quantize` stage: onnxruntime quantization of the parent ONNX model, as a ladder of rungs (`lc.Quantize`)."""

    kind: Literal["quantize"] = "quantize"  # YAML must name it; in Python the class does
    method: Method | None = None  # the single rung when `fallback` is empty; None: dynamic-int8
    fallback: list[Method | Rung] = Field(
        [], description="the whole ladder, tried in order, e.g. [static-int8, dynamic-int8, none]; a rung may "
                        "be a mapping: {method: static-int8, calibration: {method: entropy, samples: 512}}")
    per_channel: bool = True  # int8 weights scaled per output channel: closer to fp32, same size and speed
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on CPUs without VNNI, costs accuracy
    calibration: Calibration = Calibration()
    exclude_op_types: list[str] = []  # op types left in float, e.g. [Gather] keeps embeddings fp32
    exclude_nodes: list[str] = []  # node names left in float (static int8: names after quant_pre_process)
    latency: OnnxLatency = OnnxLatency()
    # Each rung must be at least this much faster than its fp32 parent (p50, timed interleaved in this
    # process) at batch 1 and at served_batch: adds gates on speedup and speedup_served unless written.
    # None: speed is neither gated nor measured (unless a gate names it).
    min_speedup: float | None = Field(1.0, gt=0)
    # A speedup whose 95% interval straddles min_speedup: `smaller` keeps the rung (not demonstrably too
    # slow), `faster` decides on the point estimate, `parent` rejects it (demonstrably fast enough only).
    when_inconclusive: Literal["smaller", "faster", "parent"] = "smaller"
    served_batch: int = Field(32, ge=1)  # the batch the pipeline serves (BentoML's max_batch_size if batching)
    selective_fallback: SelectiveFallback = SelectiveFallback()

    @model_validator(mode="after")
    def _ladder(self) -> Config:
        if self.fallback and self.method is not None and self.method != self.rungs[0].method:
            raise ValueError(f"fallback is the whole ladder; it starts with {self.rungs[0].label}, not method "
                             f"{self.method}: drop `method` or list it first")
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError("fallback lists a rung twice")
        return self

    def model_post_init(self, _ctx) -> None:
        # min_speedup is a gate like any other (in the manifest, report and junit), unless the user
        # wrote their own gate on the metric.
        mine = {g.metric for g in self.gates}
        if self.min_speedup is not None:
            defaults = [Gate(metric=m, min=self.min_speedup, bound=SPEED_BOUND[self.when_inconclusive])
                        for m in SPEED_METRICS]
            self.gates = [*self.gates, *(g for g in defaults if g.metric not in mine)]

    @property
    def rungs(self) -> list[Rung]:
        found = [r if isinstance(r, Rung) else Rung(method=r) for r in self.fallback]
        return found or [Rung(method=self.method or "dynamic-int8")]

    @property
    def ladder(self) -> list[str]:
        return [r.label for r in self.rungs]

    def settings(self, rung: Rung) -> Settings:
        """The rung's settings: its own overrides, else the stage's."""
        return Settings(method=rung.method, calibration=rung.calibration or self.calibration,
                        per_channel=self.per_channel if rung.per_channel is None else rung.per_channel,
                        reduce_range=self.reduce_range if rung.reduce_range is None else rung.reduce_range,
                        exclude_op_types=self.exclude_op_types, exclude_nodes=self.exclude_nodes,
                        block_size=rung.block_size, accuracy_level=rung.accuracy_level)

    @property
    def measures_speed(self) -> bool:
        return any(g.metric in SPEED_METRICS for g in self.gates)

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

    def served(self) -> tuple[str, ...]:
        return workloads.task_names()

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return (workloads.task(task).artifacts.onnx_holds,)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return workloads.task(task).artifacts.onnx_holds  # the same model, in int8

    def metric_names(self, task: TaskType | None = None) -> set[str]:
        # the task's scores and fidelity to the fp32 parent, on test and (val_*) on validation
        speed = (f"{m}{end}" for m in SPEED_METRICS for end in ("", "_ci_low", "_ci_high"))
        return {*ONNX_METRICS, *speed, "served_batch_size",
                *(m for t in ([workloads.task(task)] if task else workloads.tasks()) for m in t.metrics)}


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    from lifecycle import LifecycleError
    from lifecycle import gates as gatelib
    from lifecycle.edge import Predictor

    ladder = Ladder(cfg, Path(parent.path), ctx)
    attempts, candidates = [], []
    for rung in cfg.rungs:
        attempt, candidate = ladder.attempt(rung)
        attempts.append(attempt)
        if candidate is not None:
            candidates.append((attempt, candidate))
        if attempt["passed"]:
            break
    details = {"attempts": attempts}
    if not candidates:
        raise LifecycleError("quantize: every rung failed: " + "; ".join(f"{a['rung']}: {a['error']}" for a in attempts))
    passed = [c for c in candidates if c[0]["passed"]]
    # keep-best: the closest candidate; on a tie the later rung (the ladder's fallback order)
    attempt, (rung_dir, chosen) = passed[0] if passed else min(reversed(candidates), key=lambda c: closeness(c[0]))
    details.update(explain(cfg, attempts, attempt, ladder.score))

    task, test = ladder.task, ladder.splits["test"]
    predictor = Predictor.open(rung_dir, threads=cfg.latency.threads)
    reference = task.outputs(ladder.fp32, task.inputs(test))
    metrics, outputs = task.score(predictor, Scoring(ctx.pipeline, ladder.data, "test", reference, ctx.out_dir))
    metrics.update({k: v for k, v in chosen.items() if k not in gatelib.split_scores()})  # latency, size, speed
    metrics.update({f"val_{k}": v for k, v in chosen.items() if k in gatelib.split_scores()})
    details.update(method=attempt["method"], rung=attempt["rung"], passed=attempt["passed"],
                   **task.prediction_details(predictor, test, outputs))
    for f in rung_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, ctx.out_dir / f.name)
    return metrics, details
