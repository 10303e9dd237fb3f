"""export: hf-model -> ONNX (dynamic batch and sequence axes), parity-checked against PyTorch,
optionally with onnxruntime's transformer fusions, measured in onnxruntime.

Default exporter: `torch.onnx` (the TorchScript path, `dynamo=False`). On this machine it exports
MiniLM in 1.7 s against 9.1 s for the dynamo path, both match PyTorch to 1e-7, and it needs nothing
beyond torch, so the stage keeps working when optimum-onnx (which pins transformers<4.58) lags a
transformers release. `exporter: optimum` runs optimum's `main_export` on the parent directory
instead: the graph a user of `optimum-cli export onnx` gets, for comparison or for architectures our
export does not cover. `exporter: genai` (a Llama-family decoder for generation) runs onnxruntime-genai's
model builder: its fused decoder graph (GroupQueryAttention over the KV cache), parity-checked and gated
like any other; it picks its own opset (`opset` does not apply), and its graph needs no further fusions.

Graph optimisation (`optimize: true`, the default) applies onnxruntime's transformer fusions
(attention, skip-layer-norm, GELU, embed-layer-norm) with the Python fusion pass only
(`opt_level=0`), so the saved graph stays portable and onnxruntime adds its own hardware-specific
passes when a session loads it. The fused graph is measured against the plain one and kept only when
it is no slower and still within the parity bound; both timings go into the manifest.

Parity is a gate (default max 1e-4) that fails the stage, never a warning. The pieces (exporters,
fusions, parity, onnxruntime latency) are in `lifecycle.components.onnx`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import workloads
from lifecycle.components.onnx import ONNX_METRICS, OnnxLatency
from lifecycle.gates import split_scores
from lifecycle.schema import Gate, Holds, StageBase, TaskType


class Config(StageBase):
    """The `export` stage: the parent model to ONNX, parity-checked against PyTorch (`lc.Export`)."""

    kind: Literal["export"] = "export"  # YAML must name it; in Python the class does
    exporter: Literal["torch", "optimum", "genai"] = "torch"  # see the module docstring for why torch is the default
    opset: int = Field(17, ge=14)  # 14+ has the ops BERT needs; 17 adds LayerNormalization
    optimize: bool = True  # onnxruntime transformer fusions, kept only when measured no slower
    parity_samples: int = Field(32, gt=1, description="validation texts used for the parity check (largest batch)")
    parity_max: float = Field(1e-4, gt=0, description="default gate on parity_max_abs_diff")
    latency: OnnxLatency = OnnxLatency()

    def served(self) -> tuple[str, ...]:
        return workloads.task_names()

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return workloads.task(task).artifacts.export_reads

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return workloads.task(task).artifacts.onnx_holds

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        return workloads.task(task).artifacts.export_hint

    def task_problem(self, task: TaskType) -> str | None:
        if self.exporter == "optimum" and workloads.task(task).artifacts.optimum_task is None:
            return (f"exporter: optimum cannot export {task} models with everything in the graph (its "
                    "export would leave task parts such as pooling out); use `exporter: torch`")
        if self.exporter == "genai" and not workloads.task(task).artifacts.genai_builder:
            return (f"exporter: genai (onnxruntime-genai's model builder) builds decoders for generation, not {task} "
                    "models; use `exporter: torch`")
        return None

    def metric_names(self, task: TaskType | None = None) -> set[str]:
        names = {*ONNX_METRICS, "parity_max_abs_diff"}
        for t in [workloads.task(task)] if task else workloads.tasks():  # scores on test and validation; fidelity on test where measured
            names |= {*t.scores, *(f"val_{m}" for m in t.scores if m in t.split_scores)}
            names |= {*(t.fidelity if t.answers.fidelity_at_export else ()),
                      *(("argmax_agreement",) if t.answers.argmax_parity else ())}
            names |= set(t.comparisons)
        return names

    def model_post_init(self, _ctx) -> None:
        # Parity is always gated: add the default gate unless the user wrote one.
        if not any(g.metric == "parity_max_abs_diff" for g in self.gates):
            self.gates = [*self.gates, Gate(metric="parity_max_abs_diff", max=self.parity_max)]


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    from functools import partial

    from lifecycle.components import onnx
    from lifecycle.edge import Predictor
    from lifecycle.tasks import Scoring

    task, src = ctx.pipeline.task, Path(parent.path)
    plugin = workloads.task(task.type)
    model = plugin.torch_model(src)
    tokenizer = plugin.preprocessor(src, task)  # a text task's tokenizer; whatever feeds the graph otherwise
    reference = partial(plugin.reference, task=task)  # PyTorch's outputs for inputs, under the task's settings
    plain = ctx.scratch_dir / "plain" / "model.onnx"
    plain.parent.mkdir(parents=True, exist_ok=True)
    if cfg.exporter == "torch":
        plugin.export_graph(model, tokenizer, plain, cfg.opset)
    elif cfg.exporter == "optimum":
        onnx.export_optimum(src, plain, cfg.opset, plugin.artifacts.optimum_task)
    else:
        built = onnx.export_genai(model, tokenizer, plain)
    plugin.write_runtime_files(ctx.out_dir, src, tokenizer, task, onnx.onnx_input_names(plain), model)

    data = ctx.task_data()
    splits = data.splits
    parity_texts = plugin.inputs(splits["validation"])[: cfg.parity_samples]
    chosen, details = plain, {}
    if cfg.exporter == "genai":
        details["graph_optimization"] = {"kept": True, "reason": "onnxruntime-genai's model builder writes a fused graph",
                                         "fused_operators": built}
    elif not plugin.inputs.graph_fusions:
        details["graph_optimization"] = {"kept": False, "reason": f"no fusions for {plugin.name} graphs"}
    elif cfg.optimize:
        chosen, details["graph_optimization"] = onnx.maybe_fused(
            plain, ctx.out_dir, ctx.scratch_dir, model, tokenizer, parity_texts, cfg.latency, task.max_length,
            cfg.parity_max, reference)
    shutil.copy2(chosen, ctx.out_dir / "model.onnx")

    predictor = Predictor.open(ctx.out_dir, threads=cfg.latency.threads)
    metrics = onnx.parity(model, tokenizer, predictor, parity_texts, task.max_length, reference,
                          plugin.answers.argmax_parity, plugin.outputs, plugin.answers.difference)
    test = splits["test"]
    test_inputs = plugin.inputs(test)
    fp32 = reference(model, tokenizer, test_inputs) if plugin.answers.fidelity_at_export else None
    scores, outputs = plugin.score(predictor, Scoring(ctx.pipeline, data, "test", fp32, ctx.out_dir))
    metrics.update(scores)
    metrics.update(plugin.compare(model, tokenizer, ctx))
    metrics.update(onnx.onnx_latency(predictor, test_inputs[0], cfg.latency, task.max_length))
    # what a later selection (the quantize ladder) compares with
    val, _ = plugin.score(predictor, Scoring(ctx.pipeline, data, "validation"))
    metrics.update({f"val_{k}": v for k, v in val.items() if k in split_scores()})
    details.update(plugin.prediction_details(predictor, test, outputs))
    return metrics, details

