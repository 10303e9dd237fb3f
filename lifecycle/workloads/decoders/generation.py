"""Text generation: a causal LM (GPT-2 or Llama style) that continues a prompt, exported with its KV cache.

Training: the finetune stage runs `lifecycle.workloads.decoders.model.finetune` (full or LoRA; the loss covers response
tokens only), the distill stage `lifecycle.workloads.decoders.distillation.distill` (token-level KD on the teacher's
logits, student from every other teacher layer); pretrain and adapt train decoders from scratch / on a
domain as for any causal LM.

Graph: optimum-onnx's `text-generation-with-past` export of the decoder: inputs `input_ids`,
`attention_mask`, (`position_ids`,) `past_key_values.N.key/value`; outputs `logits` (batch, sequence,
vocab) and `present.N.key/value`. One graph serves the prompt (past of length 0) and every later token
(past = the previous step's present). Why optimum and not torch.onnx: measured here on tiny GPT-2 and
Llama configs from a local directory, offline, `main_export(task="text-generation-with-past")` exported
both in 0.4 s with dynamic past lengths, while transformers 4.57 feeds the cache as `Cache` objects that
torch.onnx's tracer cannot take as graph inputs without a hand-written wrapper per architecture (optimum
carries those wrappers, and the per-architecture KV layouts: GPT-2's heads, Llama's grouped KV heads).
`exporter: genai` writes the Llama family through onnxruntime-genai's model builder instead
(lifecycle.components.onnx.export_genai): the same inputs and outputs, a fused graph that decodes
several times faster per token (benchmarks/generation.py measures both).

A generator answers tokens. What export's parity and the quantize ladder compare is its `Continuations` per
prompt (lifecycle.edge.decoding): the next-token logits after the prompt and `new_tokens` greedy tokens
decoded with the KV cache, from the edge runtime (`Predictor.continuations`) and from PyTorch
(`model.continuations`). `parity_max_abs_diff` is the largest logit difference, and at least 1.0 when a
greedy continuation differs (tokens are the same or not, as the serve stage compares them), so it is
small only when the logits agree *and* the greedy generations are identical to PyTorch's;
`generation_agreement` is the share of prompts whose greedy continuation is identical. Scores: held-out `perplexity` (the headline; lower is better) on the
split's response tokens, computed from the ONNX graph. Edge method `generate`; route POST /generate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lifecycle.tasks import Answers, Artifacts, Edge, Inputs, Task
from lifecycle.tasks.kinds import tokenizer

OPTIMUM_TASK = "text-generation-with-past"


# ------------------------------------------------------------------------------------ prompts: the inputs
def load(ctx):
    """Prompt/response records (or plain text), read by lifecycle.workloads.decoders.model, once per context."""
    from lifecycle.workloads.decoders import model as generation

    key = ("generation", ctx.pipeline.task.data)
    if key not in ctx._loaded:
        src = ctx.pipeline.data[ctx.pipeline.task.data]
        seed = ctx.pipeline.seed if src.split.seed is None else src.split.seed
        ctx._loaded[key] = generation.load_data(src, ctx.pipeline, ctx.pipeline.task.generation_settings, seed)
    return ctx._loaded[key]


def export_graph(declared, model, preprocessor, path: Path, opset: int) -> None:
    from lifecycle.components import onnx

    with tempfile.TemporaryDirectory() as tmp:  # optimum exports from a directory: the model as loaded
        model.save_pretrained(tmp, safe_serialization=True)
        preprocessor.save_pretrained(tmp)
        onnx.export_optimum(Path(tmp), path, opset, OPTIMUM_TASK)


def write_runtime_files(declared, out, src, preprocessor, task, input_names, model) -> None:
    from lifecycle.components import onnx

    settings = task.generation_settings
    graph = declared.graph_schema(model)
    graph["generation"] = {"eos_token_id": preprocessor.eos_token_id, "agreement_tokens": settings.new_tokens,
                           "separator": settings.separator if settings.prompt_field else None}
    onnx.write_runtime_files(out, src, preprocessor, task.max_length, input_names, graph, [])


# what a generator is asked (and what its parity and quantization are judged on); a prompt/response
# record or plain text, so the data source needs no labels; onnxruntime's BERT fusions do not apply to a
# decoder with past inputs
PROMPTS = Inputs(kind="prompts", reads="text", request_key="prompts", read=lambda split: split["prompts"],
                 preprocessor=tokenizer, export_graph=export_graph, write_runtime_files=write_runtime_files,
                 sample=lambda x: {"text": x}, labelled=False, load=load)


# ------------------------------------------------------------------------------------ tokens: the answers
def tokens_agree(http, local, tolerance):
    """Greedy answers are the same tokens or they differ (largest difference: 1.0 when they do)."""
    same = http.get("tokens") == local.get("tokens")
    return same, 0.0 if same else 1.0


# served answers are checked token for token against the same prompts run in-process (no labels to score);
# PyTorch's greedy generations are the reference of the exported graph
def continuations(predictor, prompts, batch_size=64):
    return predictor.continuations(prompts)  # one prompt at a time: no batches


def difference(reference, outputs) -> float:
    """The largest logit difference; at least 1.0 where a greedy continuation differs (NaN stays NaN)."""
    import numpy as np

    from lifecycle.components.onnx import max_abs_diff

    largest = max_abs_diff(reference.logits, outputs.logits)
    return largest if np.array_equal(reference.tokens, outputs.tokens) or np.isnan(largest) else max(largest, 1.0)


TOKENS = Answers(kind="tokens", output="logits", width=lambda model: model.config.vocab_size, agree=tokens_agree,
                 sequence=True, fidelity_at_export=True, serve_accuracy=False, outputs=continuations,
                 difference=difference)


# ------------------------------------------------------------------------------------ the task
def torch_model(src: Path):
    from lifecycle.workloads.decoders.model import load_causal_lm

    return load_causal_lm(src)[0]


def reference(model, tokenizer, prompts, task, batch_size=64):
    """PyTorch's Continuations: next-token logits and `new_tokens` greedy ids per prompt (the task's settings)."""
    from lifecycle.workloads.decoders.model import continuations

    s = task.generation_settings
    return continuations(model, tokenizer, prompts, s.new_tokens, task.max_length, s.separator if s.prompt_field else None)


def score(predictor, scoring):
    import numpy as np

    from lifecycle.components.onnx import max_abs_diff

    rows, reference = scoring.rows, scoring.reference
    settings = scoring.pipeline.task.generation_settings
    limit = settings.limit
    metrics = {"perplexity": predictor.perplexity(rows["prompt"][:limit], rows["response"][:limit])}
    prompts = PROMPTS(rows)
    if prompts:
        speed = predictor.decoding_speed(prompts[0], settings.new_tokens)
        metrics.update({f"ort_{k}": v for k, v in speed.items()})
    if settings.rouge:
        from lifecycle.workloads.decoders.rouge import rouge_l

        n = settings.rouge.records
        answered = predictor.generate(rows["prompt"][:n], max_new_tokens=settings.rouge.answer_tokens)
        metrics["rouge_l"] = rouge_l([a["text"] for a in answered], rows["response"][:n])
    outputs = predictor.continuations(prompts)
    if reference is not None:
        metrics.update(
            generation_agreement=float(np.mean((outputs.tokens == reference.tokens).all(-1))),
            next_token_agreement=float(np.mean(outputs.logits.argmax(-1) == reference.logits.argmax(-1))),
            logit_max_abs_diff=max_abs_diff(outputs.logits, reference.logits))
    return metrics, outputs


def served_scores(answers, predictor, scoring) -> dict:
    return {"answered_fraction": sum(a is not None for a in answers) / max(len(answers), 1)}


TASK = Task(
    name="generation", inputs=PROMPTS, answers=TOKENS,
    # perplexity (lower is better) on the split; decoding speed at batch 1 with the KV cache in onnxruntime
    # (the runtime of the export and quantize stages), measured on the split's first prompt; with
    # `generation.rouge`, ROUGE-L of the graph's greedy answers to the split's first records (as finetune
    # scores the PyTorch model's on test: a quantized generator is gated on what it answers, too)
    scores=("perplexity", "ort_time_to_first_token_ms", "ort_ms_per_token", "ort_tokens_per_s", "rouge_l"),
    split_free=("ort_time_to_first_token_ms", "ort_ms_per_token", "ort_tokens_per_s"),
    fidelity=("generation_agreement", "next_token_agreement", "logit_max_abs_diff"),
    artifacts=Artifacts(("causal-lm",), "onnx-generator", finetunes_into="causal-lm", optimum_task=OPTIMUM_TASK,
                        genai_builder=True, trained_by="pretrain, adapt or finetune", export_hint=(
                            "export writes a decoder with its KV cache: give it a causal LM (pretrain / adapt with a "
                            "gpt-* or llama-* preset, or finetune under this task)")),
    edge=Edge("generate", "/generate"), torch_model=torch_model, reference=reference, score=score,
    served_scores=served_scores)
