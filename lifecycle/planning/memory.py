"""The memory model of one training step: weights, gradients, optimizer state, activations with and
without gradient checkpointing; FLOPs (~6·N·D); and what to change when a step does not fit.

The activation model follows Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
Transformer Models") per layer, adapted to what PyTorch eager saves here: fp32 or 16-bit values,
1-byte dropout masks, the s² attention terms only when attention is not a fused (SDPA) kernel, and the
vocabulary logits of a language-model head, which dominate small encoders. tests/test_planning.py
checks it against the peak of a real training step (tests/peak_memory.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

LM_OBJECTIVES = ("mlm", "clm")  # objectives with a vocabulary-sized head
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
    objective: str  # "mlm" | "clm" | "contrastive" | "classification": which head sits on the encoder
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
    if shape.objective in LM_OBJECTIVES:
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
