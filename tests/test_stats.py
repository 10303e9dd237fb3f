"""lifecycle.evaluation.stats: McNemar's exact test against hand-computed binomial tails, the per-example metrics
against scikit-learn, and the paired bootstrap's interval against the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from lifecycle.evaluation import stats


def paired(worse: int, better: int, both: int, neither: int = 0):
    base = np.array([True] * worse + [False] * better + [True] * both + [False] * neither)
    cand = np.array([False] * worse + [True] * better + [True] * both + [False] * neither)
    return base, cand


def test_mcnemar_exact_binomial_tail():
    m = stats.mcnemar(*paired(worse=8, better=2, both=50))
    assert (m.worse, m.better) == (8, 2)
    # two-sided exact: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert m.p_value == pytest.approx(112 / 1024, abs=1e-12)
    assert stats.mcnemar(*paired(worse=5, better=0, both=20)).p_value == pytest.approx(2 / 32)  # 5 of 5: not < 0.05
    assert stats.mcnemar(*paired(worse=6, better=0, both=20)).p_value == pytest.approx(2 / 64)
    assert stats.mcnemar(*paired(worse=0, better=0, both=20, neither=3)).p_value == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="shape"):
        stats.mcnemar([True, False], [True])


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_f1_and_accuracy_match_sklearn(average):
    rng = np.random.default_rng(0)
    refs, preds = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    assert stats.f1(refs, preds, average) == pytest.approx(f1_score(refs, preds, average=average))
    assert stats.accuracy(refs, preds) == pytest.approx(accuracy_score(refs, preds))
    multi_r, multi_p = rng.integers(0, 2, (200, 4)), rng.integers(0, 2, (200, 4))
    multi_p[:, 3] = multi_r[:, 3] = 0  # a label nobody has: F1 0 for it, as the evaluate module counts it
    assert stats.f1(multi_r, multi_p, average) == pytest.approx(
        f1_score(multi_r, multi_p, average=average, zero_division=0.0))
    assert stats.accuracy(multi_r, multi_p) == pytest.approx(accuracy_score(multi_r, multi_p))  # exact-set match


def test_bootstrap_identical_models_have_a_zero_interval():
    refs = np.arange(50) % 3
    preds = refs.copy()
    preds[:5] = (preds[:5] + 1) % 3
    b = stats.paired_bootstrap(stats.accuracy, refs, preds, preds.copy(), resamples=200)
    assert (b.delta, b.low, b.high, b.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation_and_is_reproducible():
    # 2000 examples; the candidate loses 100 the baseline got right and wins 20: delta = -0.04
    base, cand = paired(worse=100, better=20, both=1700, neither=180)
    refs = np.zeros(len(base), int)
    b_pred, c_pred = np.where(base, 0, 1), np.where(cand, 0, 1)
    b = stats.paired_bootstrap(stats.accuracy, refs, b_pred, c_pred, seed=1)
    n, d = len(refs), (20 - 100) / len(refs)
    sd = np.sqrt(((100 + 20) / n - d * d) / n)  # sd of the mean of per-example differences
    assert b.delta == pytest.approx(-0.04)
    assert b.low == pytest.approx(d - 1.96 * sd, abs=0.002) and b.high == pytest.approx(d + 1.96 * sd, abs=0.002)
    assert b.p_value < 0.01
    assert stats.paired_bootstrap(stats.accuracy, refs, b_pred, c_pred, seed=1) == b  # fixed seed: same verdict
    with pytest.raises(ValueError, match="equal"):
        stats.paired_bootstrap(stats.accuracy, refs, b_pred[:-1], c_pred)
