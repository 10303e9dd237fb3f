"""Training overhead of the pretrain stage: its tokens/s against a plain hand-written PyTorch loop.

    flock /tmp/lifecycle-heavy.lock .venv/bin/python benchmarks/pretrain_overhead.py [--quick]

Same model (masked-LM encoder, masked-positions-only head), same tokenizer, packed blocks, masking
collator, batch, optimizer (fused AdamW, no decay on biases and LayerNorm), linear warm-up + decay and
gradient clipping. The stage runs for real (`lifecycle.pipeline.run`: corpus, tokenizer, Trainer) and
reports tokens/s of its training loop; the plain loop is timed the same way, from its first step to its
last. A third figure is the same loop with the stock full-vocabulary MLM head, to show what the
masked-positions head saves. Writes benchmarks/results/pretrain_overhead.json.

On a 2-core machine shared with other jobs, throughput swings 10x within a minute, so: many short
rounds, stage and loop back to back in alternating order; and one intra-op thread by default (with two,
every competing process stalls both threads at each parallel region, which multiplies the noise;
`--threads 2` measures the other case).

The statistic, fixed before measuring: the ratio of the medians, median(loop tokens/s) /
median(stage tokens/s) over all rounds, target <= 1.05. The median of the per-round ratios is
recorded beside it as context, never checked: an earlier version checked it and passed at 1.044 on a
run whose ratio of medians was 1.058, so which of the two passes must not decide which is reported.
The 1-minute load average before and after is recorded (benchmarks/common.py); a load above the core
count fails its own check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
from common import ROOT, SHARED, SMOKE, Recorder  # noqa: E402  first lifecycle-side import: it sets the offline environment

BROWN = SHARED / "brown/brown.zip"
TARGET = 1.05  # the bound on median loop tokens/s / median stage tokens/s


def corpus_source() -> dict:
    if BROWN.is_file() and not SMOKE:
        # press, religion and skills categories (141 documents, ~350k tokens): enough blocks for every
        # round, and the per-round corpus preparation (outside the timed window) stays short
        return {"format": "zip", "path": str(BROWN.resolve()), "members": "brown/c[a-e][0-9][0-9]", "pos_tagged": True,
                "encoding": "latin-1", "label_field": None}
    return {"format": "jsonl", "path": str(ROOT / "tests/data/news_tiny.jsonl"), "label_field": None}


def stage_config(steps: int, batch: int, block: int) -> dict:
    model = {"preset": "bert-tiny", "tokenizer": {"vocab_size": 8000},
             "overrides": {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}}
    # No evaluation or checkpoint inside the timed window: both would be extra work the loop does not do.
    train = {"max_steps": steps, "batch_size": batch, "lr": 5e-4, "warmup_ratio": 0.1, "logging_steps": steps,
             "save_steps": steps + 1, "eval_steps": steps + 1}
    return {"kind": "pretrain", "data": "corpus", "model": model, "block_size": block, "train": train}


def run_stage(raw: dict, workdir: Path):
    from lifecycle import pipeline as runner
    from lifecycle.config import build

    [outcome] = runner.run(build(raw, base_dir=workdir), workdir=workdir, from_stage="pretrain", echo=lambda *a: None)
    return outcome.artifact


def plain_loop(art, raw: dict, steps: int, sparse: bool) -> float:
    """The same training, hand-written: tokens/s from the first step to the last."""
    import torch
    from transformers import BertForMaskedLM, get_linear_schedule_with_warmup, set_seed

    from lifecycle import models
    from lifecycle.components.language_model import sparse_mlm_class
    from lifecycle.config import build
    from lifecycle.data.corpus import MaskedLMCollator, load_corpus, tokenize_and_pack

    stage = raw["stages"][0]
    batch, block, seed = stage["train"]["batch_size"], stage["block_size"], raw["seed"]
    pipeline = build(raw, base_dir=art.path.parent)
    tokenizer = models.load_tokenizer(art.path, block)
    corpus = load_corpus(pipeline.data["corpus"], pipeline, seed)
    blocks = tokenize_and_pack(corpus.splits, tokenizer, block, "mlm", art.path.parent / ".cache" / "corpus")["train"]
    blocks = blocks.with_format(None)
    set_seed(seed)
    config = models.preset_config(pipeline.stages[0].model, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = (sparse_mlm_class() if sparse else BertForMaskedLM)(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if "bias" not in n and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-4, fused=True)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    loader = torch.utils.data.DataLoader(blocks, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=MaskedLMCollator(tokenizer, 0.15, seed),
                                         generator=torch.Generator().manual_seed(seed))
    done, started = 0, time.perf_counter()
    while done < steps:
        for inputs in loader:
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return steps * batch * block / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds (a few minutes on 2 cores)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    args = ap.parse_args(argv)
    # The stage's fixed cost (Trainer setup: optimizer, accelerate, dataloader; ~0.2-0.5 s) is part of
    # its overhead but is amortised over a real run's thousands of steps; 60 steps keep it near 2%.
    steps = args.steps or (2 if SMOKE else 60 if args.quick else 200)
    rounds = args.rounds or (1 if SMOKE else 4 if args.quick else 7)
    batch, block = 16, 128

    import torch

    recorder = Recorder("pretrain_overhead", args.quick)
    torch.set_num_threads(args.threads)
    raw = {"name": "overhead", "seed": 0, "data": {"corpus": corpus_source()}, "stages": [stage_config(steps, batch, block)]}
    figures: dict[str, list[float]] = {"stage": [], "loop": [], "loop_full_head": []}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        art = run_stage(raw, Path(tmp))  # also warms up kernels, caches the tokenized corpus
        plain_loop(art, raw, 5, sparse=True)
        for r in range(rounds):
            stage_first = r % 2 == 0
            if stage_first:
                figures["stage"].append(run_stage(raw, Path(tmp)).metrics["tokens_per_second"])
            figures["loop"].append(plain_loop(art, raw, steps, sparse=True))
            if not stage_first:
                figures["stage"].append(run_stage(raw, Path(tmp)).metrics["tokens_per_second"])
            figures["loop_full_head"].append(plain_loop(art, raw, max(10, steps // 3), sparse=False))  # a rate only
            ratios.append(figures["loop"][-1] / figures["stage"][-1])
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in figures.items())
                  + f", loop/stage {ratios[-1]:.3f}", flush=True)
        corpus_stats = {k: art.metrics[k] for k in ("train_documents", "validation_documents", "vocab_size")}
    median = {k: statistics.median(v) for k, v in figures.items()}
    ratio = median["loop"] / median["stage"]  # the checked statistic (see the docstring)
    speedup = statistics.median(a / b for a, b in zip(figures["loop"], figures["loop_full_head"]))
    results = {
        "setup": {"model": "BERT MLM, 2 layers, hidden 128, 2 heads, ffn 512", "vocab_size": corpus_stats["vocab_size"],
                  "batch_size": batch, "block_size": block, "steps": steps, "rounds": rounds,
                  "corpus": raw["data"]["corpus"]["path"], "corpus_documents": corpus_stats,
                  "torch_threads": torch.get_num_threads()},
        "figures": {"tokens_per_second": figures, "median_tokens_per_second": median},
        "ratios": {"loop_over_stage_of_medians": ratio, "loop_over_stage_per_round": ratios,
                   "median_of_per_round_ratios": statistics.median(ratios), "masked_head_speedup": speedup},
    }
    found = [{"name": "median plain loop tokens/s / median pretrain stage tokens/s", "value": round(ratio, 4),
              "target": f"<= {TARGET}", "passed": ratio <= TARGET}]
    path = recorder.save(results, found)

    from lifecycle.report import table

    print(table(["measure", "tokens/s (median)", "all rounds"],
                [[k, f"{v:,.0f}", ", ".join(f"{x:,.0f}" for x in figures[k])] for k, v in median.items()]))
    return recorder.report(found, path, f"loop / stage = {ratio:.3f} (ratio of medians; median of per-round ratios "
                                        f"{results['ratios']['median_of_per_round_ratios']:.3f}, context only); "
                                        f"masked-positions head vs full head: {speedup:.2f}x")

if __name__ == "__main__":
    sys.exit(main())
