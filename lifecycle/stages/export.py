"""export: hf-model -> ONNX (dynamic batch and sequence axes), parity-checked against PyTorch,
optionally with onnxruntime's transformer fusions, measured in onnxruntime.

Default exporter: `torch.onnx` (the TorchScript path, `dynamo=False`). On this machine it exports
MiniLM in 1.7 s against 9.1 s for the dynamo path, both match PyTorch to 1e-7, and it needs nothing
beyond torch, so the stage keeps working when optimum-onnx (which pins transformers<4.58) lags a
transformers release. `exporter: optimum` runs optimum's `main_export` on the parent directory
instead: the graph a user of `optimum-cli export onnx` gets, for comparison or for architectures our
export does not cover.

Graph optimisation (`optimize: true`, the default) applies onnxruntime's transformer fusions
(attention, skip-layer-norm, GELU, embed-layer-norm) with the Python fusion pass only
(`opt_level=0`), so the saved graph stays portable and onnxruntime adds its own hardware-specific
passes when a session loads it. The fused graph is measured against the plain one and kept only when
it is no slower and still within the parity bound; both timings go into the manifest.

Parity is a gate (default max 1e-4) that fails the stage, never a warning. The pieces (exporters,
fusions, parity, onnxruntime latency) are in `lifecycle.components.onnx`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle.components.onnx import ONNX_METRICS, OnnxLatency
from lifecycle.embedding import EMBEDDING_METRICS, FIDELITY_METRICS
from lifecycle.evaluation import CLASSIFICATION
from lifecycle.schema import Gate, Holds, StageBase, TaskType


class Config(StageBase):
    kind: Literal["export"]
    tasks = ("classification", "embedding")
    exporter: Literal["torch", "optimum"] = "torch"  # see the module docstring for why torch is the default
    opset: int = Field(17, ge=14)  # 14+ has the ops BERT needs; 17 adds LayerNormalization
    optimize: bool = True  # onnxruntime transformer fusions, kept only when measured no slower
    parity_samples: int = Field(32, gt=1, description="validation texts used for the parity check (largest batch)")
    parity_max: float = Field(1e-4, gt=0, description="default gate on parity_max_abs_diff")
    latency: OnnxLatency = OnnxLatency()

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        # classification: the logits of a trained head; embedding: an encoder body with its pooling
        return ("encoder", "masked-lm") if task == "embedding" else ("classifier",)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return "onnx-encoder" if task == "embedding" else "onnx-classifier"

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        if task == "embedding":
            return "an embedding export reads an encoder (pretrain or adapt with `objective: contrastive`)"
        return "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)"

    def metric_names(self) -> set[str]:
        # task type embedding: knn_accuracy / spearman and cosine to PyTorch instead of accuracy / argmax
        return {*ONNX_METRICS, "parity_max_abs_diff", "argmax_agreement", *EMBEDDING_METRICS, *FIDELITY_METRICS,
                *(f"val_{m}" for m in (*CLASSIFICATION, "knn_accuracy"))}

    def model_post_init(self, _ctx) -> None:
        # Parity is always gated: add the default gate unless the user wrote one.
        if not any(g.metric == "parity_max_abs_diff" for g in self.gates):
            self.gates = [*self.gates, Gate(metric="parity_max_abs_diff", max=self.parity_max)]


def run(cfg: Config, parent, ctx) -> dict:
    from transformers import AutoModelForSequenceClassification

    from lifecycle import models
    from lifecycle.components import onnx
    from lifecycle.edge import Predictor

    task = ctx.pipeline.task
    if task.type == "embedding":  # encoder + pooling in one graph
        return _export_embedding(cfg, parent, ctx)
    src = Path(parent.path)
    model = models.load_model(AutoModelForSequenceClassification, src).eval()
    tokenizer = models.load_tokenizer(src, task.max_length)
    plain = ctx.scratch_dir / "plain" / "model.onnx"
    plain.parent.mkdir(parents=True, exist_ok=True)
    if cfg.exporter == "torch":
        onnx.export_torch(model, tokenizer, plain, cfg.opset)
    else:
        onnx.export_optimum(src, plain, cfg.opset)
    onnx.write_runtime_files(ctx.out_dir, src, model, tokenizer, task.max_length, onnx.onnx_input_names(plain))

    data = ctx.task_data()
    parity_texts = data.splits["validation"]["text"][: cfg.parity_samples]
    chosen = _optimized(cfg, plain, model, tokenizer, parity_texts, ctx) if cfg.optimize else plain
    shutil.copy2(chosen, ctx.out_dir / "model.onnx")

    predictor = Predictor.open(ctx.out_dir, threads=cfg.latency.threads)
    metrics = onnx.parity(model, tokenizer, predictor, parity_texts, task.max_length)
    test = data.splits["test"]
    logits = predictor.logits(test["text"])
    metrics.update(onnx.evaluate(predictor, test, cfg.latency, task.max_length, logits))
    from lifecycle.evaluation import classification_metrics

    val = data.splits["validation"]  # what a later selection (the quantize ladder) compares with
    val_scores = classification_metrics(predictor.logits(val["text"]).argmax(-1), val["label"])
    metrics.update({f"val_{k}": v for k, v in val_scores.items()})
    ctx.details.update(onnx.prediction_details(predictor, test, logits))
    return metrics


def _optimized(cfg: Config, plain: Path, model, tokenizer, texts, ctx, reference=None) -> Path:
    """The fused graph when it is measured no slower and within the parity bound, else the plain one."""
    from lifecycle.components.onnx import maybe_fused

    chosen, found = maybe_fused(plain, ctx.out_dir, ctx.scratch_dir, model, tokenizer, texts, cfg.latency,
                                ctx.pipeline.task.max_length, cfg.parity_max, reference)
    ctx.details["graph_optimization"] = found
    return chosen


def _export_embedding(cfg: Config, parent, ctx) -> dict:
    """The export stage for `task: {type: embedding}`: encoder + pooling + normalisation in one graph
    (output `embeddings`), parity-gated against PyTorch like a classifier's logits, fused when
    measured no slower, and scored with kNN accuracy and cosine to PyTorch on the test texts."""
    from transformers import AutoModel

    from lifecycle import LifecycleError, models
    from lifecycle.components import onnx
    from lifecycle.components.inference import embed_torch
    from lifecycle.edge import Predictor
    from lifecycle.embedding import embedding_model, read_pooling, task_metrics

    if cfg.exporter != "torch":
        raise LifecycleError("export: optimum's feature-extraction export leaves pooling out of the graph; "
                             "use `exporter: torch` for `task: {type: embedding}`")
    task, src = ctx.pipeline.task, Path(parent.path)
    pooling = read_pooling(src)
    body = models.load_model(AutoModel, src).eval()
    model = embedding_model(body, pooling).eval()
    tokenizer = models.load_tokenizer(src, task.max_length)
    plain = ctx.scratch_dir / "plain" / "model.onnx"
    plain.parent.mkdir(parents=True, exist_ok=True)
    onnx.export_torch(model, tokenizer, plain, cfg.opset, output="embeddings")
    onnx.write_runtime_files(ctx.out_dir, src, body, tokenizer, task.max_length, onnx.onnx_input_names(plain))
    schema = json.loads((ctx.out_dir / "schema.json").read_text())
    schema.update(outputs={"embeddings": {"dtype": "float32", "shape": ["batch", body.config.hidden_size]}},
                  task="embedding", pooling=pooling.model_dump())
    (ctx.out_dir / "schema.json").write_text(json.dumps(schema, indent=2))
    (ctx.out_dir / "labels.json").write_text("[]")  # no labels: the bundle format stays the same

    def reference(_model, tok, texts, max_length, batch_size=64):
        return embed_torch(model, tok, texts, max_length, batch_size)

    data = ctx.task_data()
    parity_texts = data.splits["validation"]["text"][: cfg.parity_samples]
    chosen = _optimized(cfg, plain, model, tokenizer, parity_texts, ctx, reference) if cfg.optimize else plain
    shutil.copy2(chosen, ctx.out_dir / "model.onnx")
    predictor = Predictor.open(ctx.out_dir, threads=cfg.latency.threads)
    metrics = onnx.parity(model, tokenizer, predictor, parity_texts, task.max_length, reference)
    metrics.pop("argmax_agreement")  # the argmax of an embedding means nothing
    test = data.splits["test"]
    fp32 = embed_torch(model, tokenizer, test["text"], task.max_length)
    found, test_x = onnx.embedding_metrics(predictor, cfg.latency, task.max_length, ctx.pipeline, fp32)
    val = task_metrics(predictor.embed, ctx.pipeline, split="validation")  # what a later selection compares with
    ctx.details.update(pooling=pooling.model_dump(), **onnx.prediction_details(predictor, test, test_x))
    return {**metrics, **found, "val_knn_accuracy": val["knn_accuracy"]}


