"""A plan for every training stage of a pipeline, before anything runs: parameters, memory, tokens,
FLOPs and wall time from a short calibration run on this machine (`lifecycle plan`).

Nothing is guessed from a stage's fields: each training stage declares what it trains
(`StageBase.trains()`: where its model comes from, its data and sequence length, LoRA), and the
objective follows from what the stage produces (`Pipeline.holds`): a masked-LM is trained with a
masked-LM head, an encoder contrastively (two views per example, no vocabulary head), a classifier
with a sequence-classification head.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

from lifecycle import LifecycleError
from lifecycle.planning.memory import LM_OBJECTIVES, Shape, advise, memory, training_flops

OBJECTIVE = {"masked-lm": "mlm", "causal-lm": "clm", "encoder": "contrastive", "classifier": "classification"}
PLANNED = ("text",)  # the data sources whose models `lifecycle plan` sizes: transformers' text models
CHARS_PER_TOKEN = 4.0  # English text with a WordPiece/BPE vocabulary; used when no tokenizer exists yet


@dataclass
class StagePlan:
    stage: str
    kind: str
    objective: str
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


def plan(pipeline, memory_gb: float | None = None, calibrate_steps: int = 3) -> list[StagePlan]:
    """A plan for every stage of the pipeline that trains something."""
    if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
        from lifecycle import ConfigError

        raise ConfigError(f"--memory-gb: {memory_gb} is not a size; give the accelerator's memory in GB, e.g. 80")
    plans = []
    for stage in pipeline.stages:
        trains = stage.trains()
        if trains is None:
            continue
        source = pipeline.data.get(trains.data or (pipeline.task.data if pipeline.task else ""))
        if source is not None and source.reads not in PLANNED:
            from lifecycle import LifecycleError

            raise LifecycleError(f"plan: stage '{stage.label}' trains on {source.reads} data "
                                 f"('{trains.data or pipeline.task.data}'); `lifecycle plan` sizes text models only "
                                 f"(a {source.reads} model's step is milliseconds)")
        objective = OBJECTIVE[pipeline.holds(stage)]
        arch = architecture(pipeline, stage)
        model_fn = _builder(arch, objective, trains.lora)
        counts = _count(model_fn)
        seq = trains.seq or pipeline.task.max_length
        examples = _examples(pipeline, trains.data or pipeline.task.data, seq)
        tc = trains.train
        # A contrastive step runs the encoder over two views (or anchor and positive) of every example.
        per_step = tc.batch_size * (2 if objective == "contrastive" else 1)
        shape = Shape(**_dims(arch), batch=per_step, seq=seq, objective=objective, params_total=counts[0],
                      params_trainable=counts[1], act_bytes=2 if tc.precision in ("bf16", "fp16") else 4,
                      lm_positions=trains.masked_fraction if objective == "mlm" else 1.0)
        steps = steps_for(tc, examples)
        tokens = steps * tc.batch_size * tc.grad_accum * seq
        p = StagePlan(stage.label, stage.kind, objective, f"{arch.model_type} {shape.layers}x{shape.hidden}", counts[0],
                      counts[1], tc.batch_size, tc.grad_accum, seq, steps, tokens, training_flops(counts[0], tokens),
                      memory(shape, tc.gradient_checkpointing), memory(shape, not tc.gradient_checkpointing))
        if tc.gradient_checkpointing:  # keep `memory` = as configured, the other column = the alternative
            p.memory, p.memory_checkpointed = p.memory_checkpointed, p.memory
        if calibrate_steps:
            p.step_seconds = calibrate(model_fn, shape, calibrate_steps) * tc.grad_accum
            p.est_seconds = p.step_seconds * steps
        if memory_gb:
            p.fits, p.advice = advise(shape, memory_gb * 2**30, tc.grad_accum, lora_possible=trains.adapters)
        plans.append(p)
    return plans


def architecture(pipeline, stage):
    """The transformers config of the model a stage trains, following parents back to a source."""
    trains = stage.trains()
    student = trains.student if trains else None
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
    if trains is not None and trains.source is not None:
        return architecture_of_source(trains.source, pipeline)
    parent = pipeline.parent_of(stage)
    if parent is None:
        raise LifecycleError(f"stage '{stage.label}': cannot tell which model it trains")
    return architecture(pipeline, parent)


def architecture_of_source(source, pipeline):
    from transformers import AutoConfig

    from lifecycle import models

    if source.preset:
        return models.preset_config(source, vocab_size=source.tokenizer.vocab_size)
    return AutoConfig.from_pretrained(models.model_dir(source, pipeline), trust_remote_code=False)


def steps_for(train_cfg, examples: int) -> int:
    if train_cfg.max_steps and train_cfg.max_steps > 0:
        return train_cfg.max_steps
    per_step = train_cfg.batch_size * train_cfg.grad_accum
    return max(1, math.ceil(train_cfg.epochs * math.ceil(examples / per_step)))


def calibrate(build_model, shape: Shape, steps: int = 3) -> float:
    """Seconds per micro-batch step (forward, backward, AdamW) measured on this machine."""
    import torch

    model = build_model()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(5, shape.vocab, (shape.batch, shape.seq))
    times = []
    for _ in range(steps + 1):  # the first step pays for allocation and lazy init
        t0 = time.perf_counter()
        step_loss(model, shape.objective, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(sorted(times[1:])[len(times[1:]) // 2])


def step_loss(model, objective: str, ids):
    """The training loss of one batch of token ids under `objective`, as the stage computes it."""
    import torch

    mask = torch.ones_like(ids)
    if objective == "contrastive":  # the two halves of the batch are each other's positives
        from lifecycle.embedding import Pooling, info_nce, pool

        pooled = pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, Pooling())
        return info_nce(*pooled.chunk(2), temperature=0.05)
    labels = ids.clone() if objective in LM_OBJECTIVES else torch.zeros(len(ids), dtype=torch.long)  # class 0
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _dims(arch) -> dict:
    get = lambda *names: next(getattr(arch, n) for n in names if getattr(arch, n, None) is not None)  # noqa: E731
    hidden = get("hidden_size", "n_embd")
    inner = getattr(arch, "intermediate_size", None) or getattr(arch, "n_inner", None) or 4 * hidden
    return {"layers": get("num_hidden_layers", "n_layer"), "hidden": hidden,
            "heads": get("num_attention_heads", "n_head"), "intermediate": inner, "vocab": arch.vocab_size}


def _builder(arch, objective: str, lora):
    def build():
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoModelForSequenceClassification,
        )

        auto = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM, "contrastive": AutoModel,
                "classification": AutoModelForSequenceClassification}[objective]
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


def _examples(pipeline, name: str, seq: int) -> int:
    """Training examples per epoch: labelled rows, or packed blocks of the corpus (~chars / 4 tokens)."""
    from lifecycle import data

    loaded = data.load(pipeline.data[name], pipeline)
    train = loaded.splits["train"]
    if isinstance(loaded, data.LabelledData):
        return len(train)
    chars = sum(len(t) for t in train["text"])
    return max(1, int(chars / CHARS_PER_TOKEN / seq))


# ------------------------------------------------------------------------------------------ rendering
def render(plans: list[StagePlan], memory_gb: float | None) -> str:
    from lifecycle.report import table

    rows = []
    for p in plans:
        m, c = p.memory, p.memory_checkpointed
        rows.append([p.stage, p.objective, p.architecture,
                     f"{human_count(p.params_total)} / {human_count(p.params_trainable)}",
                     f"{p.batch}x{p.grad_accum}x{p.seq}", str(p.steps), human_count(p.tokens), f"{p.flops:.2e}",
                     human_bytes(m["weights"]), human_bytes(m["gradients"]), human_bytes(m["optimizer"]),
                     human_bytes(m["activations"]), human_bytes(m["total"]), human_bytes(c["total"]),
                     human_seconds(p.est_seconds), "-" if p.fits is None else ("yes" if p.fits else "NO")])
    head = ["stage", "objective", "model", "params (total / trainable)", "batch x accum x seq", "steps", "tokens",
            "FLOPs", "weights", "grads", "optimizer", "activations", "peak", "peak (other ckpt)", "est. time",
            f"fits {memory_gb:g} GB" if memory_gb else "fits"]
    out = [table(head, rows)]
    for p in plans:
        for tip in p.advice:
            out.append(f"  {p.stage}: to fit, {tip}")
    out.append("peak = weights + fp32 gradients + AdamW state + activations of one micro-batch (as configured); "
               "'other ckpt' = with gradient checkpointing toggled; est. time from a calibration run on this machine.")
    return "\n".join(out)


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
