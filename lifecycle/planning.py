"""Compute planning for training stages, before anything runs: parameters, memory (weights, gradients,
optimizer state, activations with and without gradient checkpointing), tokens, FLOPs (~6·N·D), and
wall time from a short calibration run on this machine; whether it fits a given accelerator memory,
and what to change when it does not.

The activation model follows Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
Transformer Models") per layer, adapted to what PyTorch eager saves here: fp32 or 16-bit values,
1-byte dropout masks, the s² attention terms only when attention is not a fused (SDPA) kernel, and the
vocabulary logits of a language-model head, which dominate small encoders.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

from lifecycle import LifecycleError

ADAM_STATE_BYTES = 8  # two fp32 moments per trainable parameter
MASTER_BYTES = 4  # weights and gradients are kept in fp32 (autocast computes in 16-bit on the fly)


@dataclass
class Shape:
    """What the memory model needs to know about one training step."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    batch: int  # per device micro-batch
    seq: int
    head: str  # "mlm" | "clm" | "classification"
    params_total: int
    params_trainable: int
    act_bytes: int = 4  # 4 fp32, 2 bf16/fp16 activations
    fused_attention: bool = False  # True where SDPA runs a fused kernel in training (CUDA): no s x s terms
    mask_bytes: int | None = None  # dropout mask element size; None: same as activations (PyTorch CPU)
    lm_positions: float = 1.0  # share of positions the LM head is computed at (0.15 for masked-only MLM heads)
    dropout: bool = True


def memory(shape: Shape, checkpointing: bool = False) -> dict[str, float]:
    """Estimated peak bytes of one training step, split by what holds them."""
    s, b, h, i, a, p = shape.seq, shape.batch, shape.hidden, shape.intermediate, shape.heads, shape.act_bytes
    # PyTorch's CPU dropout saves its mask as a tensor of the input's dtype; CUDA's saves 1-byte masks.
    m = (p if shape.mask_bytes is None else shape.mask_bytes) if shape.dropout else 0
    sbh = s * b * h
    # Saved per layer (checked with autograd's saved-tensor hooks): the QKV input, Q, K, V, the out-proj
    # input, 2 LayerNorm inputs and the MLP input (8 x sbh); 2 dropout masks; the MLP intermediate
    # before and after its activation (2 x sbi).
    layer = sbh * (8 * p + 2 * m) + 2 * s * b * i * p
    if shape.fused_attention:
        layer += b * a * s * 4  # log-sum-exp kept by a fused kernel
    else:  # SDPA's math path (CPU training with dropout): probabilities, dropout mask, dropped probabilities
        layer += b * a * s * s * (2 * p + m)
    embeddings = sbh * (p + m)
    head = 0.0
    if shape.head in ("mlm", "clm"):
        positions = s * b * shape.lm_positions
        head = positions * h * 3 * p + positions * shape.vocab * 2 * p  # transform; logits and log-softmax
    # Backward holds the gradients of about one layer's activations (or of the logits) at a time.
    transient = max(layer, head)
    if checkpointing:
        # Keep each layer's input; in backward, a layer is recomputed (its activations and the forward's
        # temporaries) while the gradients of the layer above are alive.
        activations = shape.layers * sbh * p + 2 * layer + embeddings + head + transient
    else:
        activations = shape.layers * layer + embeddings + head + transient
    out = {
        "weights": float(shape.params_total * MASTER_BYTES),
        "gradients": float(shape.params_trainable * MASTER_BYTES),
        "optimizer": float(shape.params_trainable * ADAM_STATE_BYTES),
        "activations": float(activations),
    }
    out["total"] = sum(out.values())
    return out


def training_flops(params: int, tokens: int) -> float:
    """~6·N·D: forward 2·N·D plus backward 4·N·D (attention's s² term ignored at these lengths)."""
    return 6.0 * params * tokens


@dataclass
class StagePlan:
    stage: str
    kind: str
    architecture: str
    params_total: int
    params_trainable: int
    batch: int
    grad_accum: int
    seq: int
    steps: int
    tokens: int
    flops: float
    memory: dict[str, float]
    memory_checkpointed: dict[str, float]
    step_seconds: float | None = None
    est_seconds: float | None = None
    fits: bool | None = None
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def advise(shape: Shape, budget_bytes: float, accum: int, lora_possible: bool = True) -> tuple[bool, list[str]]:
    """Whether one step fits budget_bytes, and the smallest changes that make it fit."""
    if memory(shape)["total"] <= budget_bytes:
        return True, []
    tips = []
    if memory(shape, checkpointing=True)["total"] <= budget_bytes:
        tips.append("turn on train.gradient_checkpointing (about 30% more compute)")
    b = shape.batch
    while b > 1:
        b //= 2
        smaller = Shape(**{**asdict(shape), "batch": b})
        if memory(smaller)["total"] <= budget_bytes:
            tips.append(f"train.batch_size {b} with train.grad_accum {accum * shape.batch // b} (same effective batch)")
            break
    if shape.act_bytes == 4:
        half = Shape(**{**asdict(shape), "act_bytes": 2})
        if memory(half)["total"] <= budget_bytes:
            tips.append("train.precision bf16 (on accelerators that support it)")
    if lora_possible and shape.params_trainable == shape.params_total:
        tips.append("LoRA (finetune.lora) cuts gradient and optimizer memory to a few % of the weights")
    if not tips:
        tips.append("the weights alone do not fit: use a smaller preset or a larger accelerator")
    return False, tips


def calibrate(build_model, shape: Shape, steps: int = 3) -> float:
    """Seconds per micro-batch step (forward, backward, AdamW) measured on this machine."""
    import torch

    model = build_model()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(5, shape.vocab, (shape.batch, shape.seq))
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    kwargs["labels"] = ids.clone() if shape.head != "classification" else torch.zeros(shape.batch, dtype=torch.long)
    times = []
    for _ in range(steps + 1):  # the first step pays for allocation and lazy init
        t0 = time.perf_counter()
        model(**kwargs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(sorted(times[1:])[len(times[1:]) // 2])


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def human_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def steps_for(train_cfg, examples: int) -> int:
    if train_cfg.max_steps and train_cfg.max_steps > 0:
        return train_cfg.max_steps
    per_step = train_cfg.batch_size * train_cfg.grad_accum
    return max(1, math.ceil(train_cfg.epochs * math.ceil(examples / per_step)))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise LifecycleError(message)


# ------------------------------------------------------------------------------------ measurement
def measure_peak(arch: dict, head: str, batch: int, seq: int, checkpointing: bool = False) -> dict:
    """Peak memory of one real training step, measured in a fresh process: sampled peak of anonymous
    resident memory minus its value before the model existed (GPU: torch.cuda.max_memory_allocated)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    job = json.dumps({"arch": arch, "head": head, "batch": batch, "seq": seq, "checkpointing": checkpointing})
    # A clean environment: what the caller's process set (launchers, test fixtures) must not change the figure.
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    out = subprocess.run([sys.executable, "-m", "lifecycle.planning", job], capture_output=True, text=True, check=False,
                         env=env, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise LifecycleError(f"memory measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_in_this_process(job: dict) -> dict:
    import gc
    import resource
    import threading

    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    def anon() -> int:
        # Anonymous resident memory (resident - file-backed): tensors, not library pages, which the
        # kernel may evict and fault back in (proactive reclaim) and so would blur an RSS difference.
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * resource.getpagesize()

    high = [0]
    done = threading.Event()

    def sample() -> None:  # the kernel keeps no high-water mark of anonymous memory: sample it
        while not done.is_set():
            high[0] = max(high[0], anon())
            time.sleep(0.0005)

    arch, head = job["arch"], job["head"]
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)

    def build(a: dict):
        if head == "clm":
            return GPT2LMHeadModel(GPT2Config(**a))
        if head == "mlm":
            return BertForMaskedLM(BertConfig(**a))
        return BertForSequenceClassification(BertConfig(**a, num_labels=5))

    # One step of a toy model of the same class first: lazy imports, kernel and allocator set-up then
    # happen before the baseline, so the difference below is the step's own memory.
    warm = build({"n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 64} if head == "clm" else
                 {"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
                  "vocab_size": 64})
    ids = torch.randint(5, 64, (2, 8))
    warm(input_ids=ids, labels=ids if head != "classification" else torch.zeros(2, dtype=torch.long)).loss.backward()
    del warm
    gc.collect()
    before = anon()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model = build(arch)
    if job["checkpointing"]:
        model.gradient_checkpointing_enable()
    device = "cuda" if cuda else "cpu"
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (job["batch"], job["seq"]), device=device)
    labels = ids.clone() if head != "classification" else torch.zeros(job["batch"], dtype=torch.long, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(2):  # the second step has optimizer state from the start: the steady-state peak
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base + sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        done.set()
        sampler.join()
        peak = high[0] - before
    return {"peak_bytes": peak, "params": sum(p.numel() for p in model.parameters())}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_measure_in_this_process(json.loads(sys.argv[1]))))


# ------------------------------------------------------------------------------- from a pipeline
CHARS_PER_TOKEN = 4.0  # English text with a WordPiece/BPE vocabulary; used when no tokenizer exists yet


def plan(pipeline, memory_gb: float | None = None, calibrate_steps: int = 3) -> list[StagePlan]:
    """A plan for every training stage (a stage with a `train` section) of the pipeline."""
    plans = []
    for stage in pipeline.stages:
        if getattr(stage, "train", None) is None:
            continue
        arch = architecture(pipeline, stage)
        head = _head(stage, arch)
        model_fn = _builder(arch, head, getattr(stage, "lora", None))
        counts = _count(model_fn)
        seq = getattr(stage, "block_size", None) or pipeline.task.max_length
        examples = _examples(pipeline, stage, seq)
        tc = stage.train
        precision_bytes = 2 if tc.precision in ("bf16", "fp16") else 4
        lm_positions = getattr(stage, "mlm_probability", 1.0) if head == "mlm" else 1.0
        shape = Shape(**_dims(arch), batch=tc.batch_size, seq=seq, head=head, params_total=counts[0],
                      params_trainable=counts[1], act_bytes=precision_bytes, lm_positions=lm_positions)
        steps = steps_for(tc, examples)
        tokens = steps * tc.batch_size * tc.grad_accum * seq
        p = StagePlan(stage.label, stage.kind, f"{arch.model_type} {shape.layers}x{shape.hidden}", counts[0], counts[1],
                      tc.batch_size, tc.grad_accum, seq, steps, tokens, training_flops(counts[0], tokens),
                      memory(shape, tc.gradient_checkpointing), memory(shape, not tc.gradient_checkpointing))
        if tc.gradient_checkpointing:  # keep `memory` = as configured, the other column = the alternative
            p.memory, p.memory_checkpointed = p.memory_checkpointed, p.memory
        if calibrate_steps:
            p.step_seconds = calibrate(model_fn, shape, calibrate_steps) * tc.grad_accum
            p.est_seconds = p.step_seconds * steps
        if memory_gb:
            p.fits, p.advice = advise(shape, memory_gb * 2**30, tc.grad_accum, lora_possible=hasattr(stage, "lora"))
        plans.append(p)
    return plans


def architecture(pipeline, stage):
    """The transformers config of the model a stage trains, following parents back to a source."""


    student = getattr(stage, "student", None)
    if student is not None:  # distill: a given student model, or the teacher with fewer layers
        if student.model is not None:
            return architecture_of_source(student.model, pipeline)
        cfg = copy.deepcopy(architecture(pipeline, pipeline.parent_of(stage)))
        key = "num_hidden_layers" if hasattr(cfg, "num_hidden_layers") else "n_layer"
        n = len(student.layers) if student.layers else (student.num_layers or math.ceil(getattr(cfg, key) / 2))
        setattr(cfg, key, n)
        for k, v in student.overrides.items():
            setattr(cfg, k, v)
        return cfg
    source = getattr(stage, "model", None)
    if source is not None:
        return architecture_of_source(source, pipeline)
    parent = pipeline.parent_of(stage)
    require(parent is not None, f"stage '{stage.label}': cannot tell which model it trains")
    return architecture(pipeline, parent)


def architecture_of_source(source, pipeline):
    from transformers import AutoConfig

    from lifecycle import models

    if source.preset:
        return models.preset_config(source, vocab_size=source.tokenizer.vocab_size)
    return AutoConfig.from_pretrained(models.model_dir(source, pipeline), trust_remote_code=False)


def _head(stage, arch) -> str:
    if stage.kind in ("pretrain", "adapt"):
        return "clm" if arch.model_type == "gpt2" else "mlm"
    return "classification"


def _dims(arch) -> dict:
    get = lambda *names: next(getattr(arch, n) for n in names if getattr(arch, n, None) is not None)  # noqa: E731
    hidden = get("hidden_size", "n_embd")
    inner = getattr(arch, "intermediate_size", None) or getattr(arch, "n_inner", None) or 4 * hidden
    return {"layers": get("num_hidden_layers", "n_layer"), "hidden": hidden,
            "heads": get("num_attention_heads", "n_head"), "intermediate": inner, "vocab": arch.vocab_size}


def _builder(arch, head: str, lora):
    def build():
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoModelForSequenceClassification,
        )

        auto = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM}.get(head, AutoModelForSequenceClassification)
        model = auto.from_config(arch)
        if lora is not None:
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                                     target_modules=lora.target_modules))
        return model

    return build


def _count(build) -> tuple[int, int]:
    import torch

    with torch.device("meta"):  # exact counts without allocating weights
        model = build()
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def _examples(pipeline, stage, seq: int) -> int:
    """Training examples per epoch: labelled rows, or packed blocks of the corpus (~chars / 4 tokens)."""
    from lifecycle import data

    name = getattr(stage, "data", None) or pipeline.task.data
    loaded = data.load(pipeline.data[name], pipeline)
    train = loaded.splits["train"]
    if isinstance(loaded, data.LabelledData):
        return len(train)
    chars = sum(len(t) for t in train["text"])
    return max(1, int(chars / CHARS_PER_TOKEN / seq))


def render(plans: list[StagePlan], memory_gb: float | None) -> str:
    from lifecycle.report import table

    rows = []
    for p in plans:
        m, c = p.memory, p.memory_checkpointed
        rows.append([p.stage, p.architecture, f"{human_count(p.params_total)} / {human_count(p.params_trainable)}",
                     f"{p.batch}x{p.grad_accum}x{p.seq}", str(p.steps), human_count(p.tokens), f"{p.flops:.2e}",
                     human_bytes(m["weights"]), human_bytes(m["gradients"]), human_bytes(m["optimizer"]),
                     human_bytes(m["activations"]), human_bytes(m["total"]), human_bytes(c["total"]),
                     human_seconds(p.est_seconds), "-" if p.fits is None else ("yes" if p.fits else "NO")])
    head = ["stage", "model", "params (total / trainable)", "batch x accum x seq", "steps", "tokens", "FLOPs",
            "weights", "grads", "optimizer", "activations", "peak", "peak (other ckpt)", "est. time",
            f"fits {memory_gb:g} GB" if memory_gb else "fits"]
    out = [table(head, rows)]
    for p in plans:
        for tip in p.advice:
            out.append(f"  {p.stage}: to fit, {tip}")
    out.append("peak = weights + fp32 gradients + AdamW state + activations of one micro-batch (as configured); "
               "'other ckpt' = with gradient checkpointing toggled; est. time from a calibration run on this machine.")
    return "\n".join(out)
