"""Latency, measured one way everywhere: warm-up calls, then N timed calls at a stated batch size,
sequence length and thread count; p50/p95/p99 in milliseconds. Every latency metric names its runtime
(`torch_latency_p50_ms`, `ort_latency_p50_ms`, `http_latency_p50_ms`): they are different quantities."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from pydantic import Field

from lifecycle.schema import Strict


def measure(call: Callable[[], object], warmup: int = 3, runs: int = 20, runtime: str = "torch") -> dict[str, float]:
    for _ in range(warmup):
        call()
    arr = np.asarray(call_times(call, runs))
    return {f"{runtime}_latency_p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def interleaved(calls: dict[str, Callable[[], object]], rounds: int = 3, warmup: int = 2,
                runs: int = 10) -> dict[str, list[float]]:
    """Each call's times (ms) over `rounds` rounds of `runs` calls, the order alternating between rounds, so
    that load from other processes hits every call alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            times[name] += call_times(calls[name], runs)
    return times


def latency_metrics(runtime: str, batch: str = "") -> tuple[str, ...]:
    """e.g. ("ort_latency_b32_p50_ms", ...) for runtime "ort", batch "b32_"."""
    return tuple(f"{runtime}_latency_{batch}p{q}_ms" for q in (50, 95, 99))


TORCH_LATENCY = latency_metrics("torch")
# what a latency measurement reports of its own settings beside the times (torch_latency, onnx_latency)
LATENCY_SETTINGS = ("latency_batch_size", "latency_seq_len", "latency_threads")


class Latency(Strict):
    """How a stage times its model: one text repeated `batch_size` times, padded to `seq_len`."""

    batch_size: int = Field(1, gt=0)
    seq_len: int | None = Field(None, gt=0, description="None: the task's max_length")
    runs: int = Field(20, gt=0)
    warmup: int = Field(3, ge=0)


class TorchLatency(Latency):
    threads: int | None = Field(None, gt=0, description="torch intra-op threads while timing; None: torch's default")


def torch_latency(model, tokenizer, text: str, cfg: TorchLatency, max_length: int) -> dict:
    """torch latency of one forward pass (ms) at the configured batch, sequence length (padded) and thread
    count, on the CPU (where later stages serve the model), also after training on a GPU."""
    import torch

    model.to("cpu")
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        seq_len = cfg.seq_len or max_length
        enc = tokenizer([text] * cfg.batch_size, truncation=True, max_length=seq_len, padding="max_length",
                        return_tensors="pt")
        model.eval()

        def call():
            with torch.inference_mode():
                model(**enc)

        out = measure(call, warmup=cfg.warmup, runs=cfg.runs, runtime="torch")
        return {**out, "latency_batch_size": cfg.batch_size, "latency_seq_len": seq_len,
                "latency_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- relative latency, A/B
# A ratio of two latencies measured minutes apart (or in another stage's process) carries whatever the
# machine did in between. A relative latency gate therefore times candidate and reference again, in one
# process, in alternating rounds on the same inputs and threads, and judges the interval of the ratio.
AB_ROUNDS, AB_MAX_ROUNDS, AB_CALLS = 8, 32, 12
SAMPLE_TEXT = "A release gate measures the candidate and the model it replaces side by side on the same input."


def ab_ratio(candidate: Callable[[], object], reference: Callable[[], object], bound: float, kind: str,
             percentile: float = 50, rounds: int = AB_ROUNDS, max_rounds: int = AB_MAX_ROUNDS,
             calls: int = AB_CALLS, warmup: int = 3) -> dict:
    """Candidate/reference latency ratio from interleaved rounds, with a 95% interval.

    Each round times `calls` calls of each side (ABBA order, so drift hits both alike) and takes their
    `percentile`; the rounds' log-ratios give a t-interval. kind "max_ratio" passes when the interval lies
    below `bound`, fails when it lies above, and otherwise re-measures in blocks of `rounds` up to
    `max_rounds`: still straddling, the verdict is "inconclusive" (a loaded machine, or a true ratio at
    the bound) rather than a coin flip.
    """
    import os

    for _ in range(warmup):
        candidate()
        reference()
    load_before = os.getloadavg()[0]
    cand, ref = [], []
    while True:
        for _ in range(rounds):
            pair = [(cand, candidate), (ref, reference)]
            for out, call in pair if len(cand) % 2 == 0 else pair[::-1]:
                out.append(float(np.percentile(call_times(call, calls), percentile)))
        verdict, (lo, hi) = ratio_verdict(np.log(cand) - np.log(ref), bound, kind)
        if verdict != "inconclusive" or len(cand) >= max_rounds:
            break
    return {"ratio": float(np.exp(np.mean(np.log(cand)) - np.mean(np.log(ref)))), "interval": [lo, hi],
            "verdict": verdict, "rounds": len(cand), "calls_per_round": calls, "percentile": percentile,
            "candidate_ms": float(np.median(cand)), "reference_ms": float(np.median(ref)),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def ratio_verdict(log_ratios, bound: float, kind: str) -> tuple[str, tuple[float, float]]:
    """Verdict and 95% t-interval of exp(mean log-ratio): pass / fail when the interval clears the bound
    on the side the gate asks for / the other side, inconclusive when it straddles it."""
    from scipy import stats

    logs = np.asarray(log_ratios, dtype=float)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    lo, hi = float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
    if hi < bound or lo > bound:
        return ("pass" if (hi < bound) == (kind == "max_ratio") else "fail"), (lo, hi)
    return "inconclusive", (lo, hi)


def call_times(call: Callable[[], object], n: int) -> list[float]:
    """Milliseconds of each of `n` calls, back to back."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def artifact_call(path, kind: str, batch_size: int, seq_len: int, threads: int | None) -> Callable[[], object]:
    """One inference call of an artifact at a stated batch size, padded sequence length and thread count:
    an onnx-model through onnxruntime (the edge runtime), an hf-model classifier through PyTorch eager."""
    texts = [SAMPLE_TEXT] * batch_size
    if kind == "onnx-model":
        from lifecycle.edge import Predictor

        predictor = Predictor.open(path, threads=threads)
        feeds = predictor.encode(texts, pad_to=seq_len)
        return lambda: predictor.session.run(None, feeds)
    from pathlib import Path

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lifecycle.models import load_model

    if threads:
        torch.set_num_threads(threads)
    # as the stages load it: safetensors only, and the head pooling its config declares
    model = load_model(AutoModelForSequenceClassification, Path(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")

    def call():
        with torch.inference_mode():
            return model(**inputs)

    return call
