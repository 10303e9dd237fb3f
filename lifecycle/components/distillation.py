"""Distillation: a student from a teacher's layers, the teacher's logits (cached once per training set),
and the losses (soft targets with temperature, hidden-state cosine). Used by the distill stage."""

from __future__ import annotations

import re
from pathlib import Path

from lifecycle import LifecycleError

LAYER_KEY = re.compile(r"\.(layer|layers|h)\.(\d+)\.")  # BERT/RoBERTa/DistilBERT/GPT-2 block prefixes


def pick_layers(teacher_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over the teacher's depth, first and last included."""
    if keep > teacher_layers:
        raise LifecycleError(f"distill: the student cannot have {keep} layers; the teacher has {teacher_layers}")
    if keep == 1:
        return [teacher_layers - 1]
    return sorted({round(i * (teacher_layers - 1) / (keep - 1)) for i in range(keep)})


def student_layers(spec, n_teacher: int) -> list[int]:
    """The teacher layers a student keeps (distill's `student` settings): `spec.layers`, else
    `spec.num_layers` evenly spaced (default: half the teacher's, rounded up)."""
    layers = spec.layers if spec.layers is not None else pick_layers(n_teacher, spec.num_layers or (n_teacher + 1) // 2)
    if not layers or len(set(layers)) < len(layers) or any(not 0 <= i < n_teacher for i in layers):
        raise LifecycleError(f"distill: student.layers must be distinct teacher layer indices in 0..{n_teacher - 1}; "
                             f"got {layers}")
    return layers


def student_config(teacher_config, layers: list[int], overrides: dict):
    """The teacher's config with `len(layers)` layers and the student's `overrides` (each must be a field)."""
    import copy

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(layers)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise LifecycleError(f"distill: student.overrides.{key} is not a field of {type(config).__name__}")
        setattr(config, key, value)
    return config


def init_from_teacher(student, teacher, layers: list[int]) -> float:
    """Copy teacher tensors into the student (teacher block layers[j] -> student block j); tensors
    whose shape differs keep their random init. Returns the fraction of student parameters copied."""
    import torch

    position = {t: s for s, t in enumerate(layers)}
    target = student.state_dict()
    picked = {}
    for key, tensor in teacher.state_dict().items():
        m = LAYER_KEY.search(key)
        if m:
            if int(m.group(2)) not in position:
                continue
            key = key[: m.start()] + f".{m.group(1)}.{position[int(m.group(2))]}." + key[m.end():]
        if key in target and target[key].shape == tensor.shape:
            picked[key] = tensor
    with torch.no_grad():
        student.load_state_dict(picked, strict=False)
    total = sum(t.numel() for t in target.values())
    return sum(picked[k].numel() for k in picked) / total


def teacher_logits(teacher, tokenizer, texts: list[str], max_length: int, cache_dir: Path):
    """Teacher logits over the training texts, cached in the stage's scratch directory (a crash and
    resume reuses them; the directory is keyed by the stage's cache key)."""
    import os

    import numpy as np

    from lifecycle.components.inference import logits_of

    path = cache_dir / "teacher_logits.npy"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    logits = logits_of(teacher, tokenizer, texts, max_length).astype(np.float32)
    part = path.with_name(f"{path.stem}.{os.getpid()}.npy")  # under torchrun every rank writes the same values
    np.save(part, logits, allow_pickle=False)
    os.replace(part, path)
    return logits


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def token_distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """distillation_loss per token of a causal LM: position i predicts token i + 1, and only positions whose
    next token is a target (label != -100: response tokens, not prompt or padding) count, each equally."""
    keep = labels[:, 1:] != -100
    return distillation_loss(student_logits[:, :-1][keep], teacher_logits[:, :-1][keep], labels[:, 1:][keep],
                             temperature, alpha)


def alternating_rounds(rounds: int, teacher_round, student_round) -> tuple[dict, dict]:
    """Teacher and student latency in `rounds` alternating rounds, so that load from other processes hits both
    alike: `*_round()` measures one round (a dict with `torch_latency_p50_ms`); per model, the median round."""
    got: dict[str, list[dict]] = {"teacher": [], "student": []}
    for _ in range(rounds):
        got["teacher"].append(teacher_round())
        got["student"].append(student_round())
    median = {k: sorted(v, key=lambda r: r["torch_latency_p50_ms"])[len(v) // 2] for k, v in got.items()}
    return median["teacher"], median["student"]


def paired_latency(teacher, t_tok, student, s_tok, text: str, cfg, max_length: int) -> tuple[dict, dict]:
    """Teacher and student torch latency on `text` (`cfg.latency_rounds` alternating rounds of `cfg.latency`)."""
    from lifecycle.evaluation.latency import torch_latency

    return alternating_rounds(cfg.latency_rounds, lambda: torch_latency(teacher, t_tok, text, cfg.latency, max_length),
                              lambda: torch_latency(student, s_tok, text, cfg.latency, max_length))


def student_costs(teacher, student, feeds: dict, cfg, out_dir: Path, train_seconds: float) -> dict:
    """What a distill stage reports of a student that reads tensors (a table's, an image's) beside its
    teacher: batch latency of `model(**feeds)` in alternating rounds, speedup, compression, size."""
    import torch

    from lifecycle import models
    from lifecycle.evaluation.latency import measure

    def one_round(model):
        return lambda: measure(lambda: model(**feeds), cfg.latency.warmup, cfg.latency.runs)

    with torch.inference_mode():
        t_lat, s_lat = alternating_rounds(cfg.latency_rounds, one_round(teacher), one_round(student))
    s_params, t_params = (models.count_parameters(m)["params_total"] for m in (student, teacher))
    return {**s_lat, **{f"teacher_{k}": v for k, v in t_lat.items()},
            "speedup": t_lat["torch_latency_p50_ms"] / s_lat["torch_latency_p50_ms"], "compression": t_params / s_params,
            "params_total": s_params, "size_mb": models.size_mb(Path(out_dir) / "model.safetensors"),
            "train_seconds": train_seconds}


def hidden_loss(student_hidden, teacher_hidden, layer_map: list[int], mask):
    """Mean (1 - cosine) between student layer j and teacher layer layer_map[j], over real tokens."""
    import torch.nn.functional as F

    m = mask.unsqueeze(-1).to(student_hidden[0].dtype)
    losses = []
    for j, t in enumerate(layer_map):
        cos = F.cosine_similarity(student_hidden[j + 1], teacher_hidden[t + 1], dim=-1).unsqueeze(-1)
        losses.append(((1 - cos) * m).sum() / m.sum())
    return sum(losses) / len(losses)
