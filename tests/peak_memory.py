"""Peak memory of one real training step, measured in a fresh process: the reference that
lifecycle.planning's memory model is checked against (tests/test_planning.py).

    python tests/peak_memory.py '{"arch": {...}, "objective": "mlm", "batch": 16, "seq": 128, "checkpointing": false}'

CPU: sampled peak of anonymous resident memory minus its value before the model existed; GPU:
torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure_peak(arch: dict, objective: str, batch: int, seq: int, checkpointing: bool = False) -> dict:
    job = json.dumps({"arch": arch, "objective": objective, "batch": batch, "seq": seq, "checkpointing": checkpointing})
    # A clean environment: what the caller's process set (launchers, test fixtures) must not change the figure.
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    out = subprocess.run([sys.executable, __file__, job], capture_output=True, text=True, check=False, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{out.stderr[-2000:]}")
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

    from lifecycle.planning.plan import step_loss

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

    arch, objective = job["arch"], job["objective"]
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)

    def build(a: dict):
        if objective == "clm":
            return GPT2LMHeadModel(GPT2Config(**a))
        if objective == "mlm":
            return BertForMaskedLM(BertConfig(**a))
        return BertForSequenceClassification(BertConfig(**a, num_labels=5))

    # One step of a toy model of the same class first: lazy imports, kernel and allocator set-up then
    # happen before the baseline, so the difference below is the step's own memory.
    warm = build({"n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 64} if objective == "clm" else
                 {"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
                  "vocab_size": 64})
    step_loss(warm, objective, torch.randint(5, 64, (2, 8))).backward()
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
    ids = torch.randint(5, model.config.vocab_size, (job["batch"], job["seq"]), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(2):  # the second step has optimizer state from the start: the steady-state peak
        step_loss(model, objective, ids).backward()
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
    print(json.dumps(_measure_in_this_process(json.loads(sys.argv[1]))))
