"""Paired tests for comparing two models on the same test examples (release gates).

Two models scored on the same texts make mostly the same mistakes; what matters is where they differ.
McNemar's exact test looks only at the discordant pairs (one right, the other wrong); a paired
bootstrap resamples examples, scoring both models on each resample, which gives an interval for any
metric computed from per-example predictions (F1 is not a mean of per-example values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass
class McNemar:
    worse: int  # baseline right, candidate wrong
    better: int  # baseline wrong, candidate right
    p_value: float  # two-sided exact binomial test on the discordant pairs (1.0 when there are none)


def mcnemar(baseline_correct, candidate_correct) -> McNemar:
    from scipy.stats import binomtest

    a, b = np.asarray(baseline_correct, bool), np.asarray(candidate_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    worse, better = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(worse, worse + better, 0.5).pvalue if worse + better else 1.0
    return McNemar(worse, better, float(p))


@dataclass
class Bootstrap:
    delta: float  # metric(candidate) - metric(baseline) on the full set
    low: float  # percentile interval of the delta over resamples
    high: float
    p_value: float  # two-sided: how often a resample's delta falls on the other side of zero
    resamples: int
    level: float


def paired_bootstrap(metric, references, baseline, candidate, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> Bootstrap:
    """Interval for metric(references, candidate) - metric(references, baseline), resampling examples
    (rows) with replacement; the same rows score both models. A fixed seed makes the verdict reproducible."""
    refs, base, cand = np.asarray(references), np.asarray(baseline), np.asarray(candidate)
    n = len(refs)
    if not n or len(base) != n or len(cand) != n:
        raise ValueError(f"paired bootstrap needs equal, non-empty arrays (got {len(refs)}, {len(base)}, {len(cand)})")
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        deltas[i] = metric(refs[idx], cand[idx]) - metric(refs[idx], base[idx])
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    # identical predictions give all-zero deltas: p = 1, not 0
    p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    return Bootstrap(float(metric(refs, cand) - metric(refs, base)), float(low), float(high), float(p), resamples, level)


# Metrics over per-example predictions: class ids (n,) or multi-hot rows (n, labels), as the
# evaluation modules compute them (multi-label accuracy is exact-set match).
def accuracy(references, predictions) -> float:
    refs, preds = np.asarray(references), np.asarray(predictions)
    same = refs == preds
    return float((same.all(-1) if same.ndim > 1 else same).mean())


def f1(references, predictions, average: str) -> float:
    refs, preds = np.asarray(references), np.asarray(predictions)
    if refs.ndim == 1:  # one-hot single-label ids: per-class counts by bincount
        k = int(max(refs.max(), preds.max())) + 1
        refs, preds = np.eye(k, dtype=bool)[refs], np.eye(k, dtype=bool)[preds]
        present = refs.any(0) | preds.any(0)  # sklearn's macro averages over labels seen in either
    else:
        refs, preds = refs.astype(bool), preds.astype(bool)
        present = np.ones(refs.shape[1], bool)  # multi-label: every label column counts
    tp, fp, fn = (refs & preds).sum(0), (~refs & preds).sum(0), (refs & ~preds).sum(0)
    if average == "micro":
        denom = 2 * tp.sum() + fp.sum() + fn.sum()
        return float(2 * tp.sum() / denom) if denom else 0.0
    denom = 2 * tp + fp + fn
    per = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return float(per[present].mean()) if present.any() else 0.0


METRICS = {
    "accuracy": accuracy,
    "f1_macro": lambda r, p: f1(r, p, "macro"),
    "f1_micro": lambda r, p: f1(r, p, "micro"),
}
