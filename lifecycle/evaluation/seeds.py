"""Metrics across seeds: mean, standard deviation and a 95% confidence interval.

The interval is across seeds (Student's t with n-1 degrees of freedom): it answers "how much does
this result move when only the seed changes", which is what a release gate on `lower_ci` needs.
With 3 seeds t = 4.30, so the interval is wide on purpose: a lucky seed cannot bless a release.
"""

from __future__ import annotations

import math

METHOD = "95% t-interval across seeds"


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    from scipy import stats

    runs = list(per_seed.values())
    n = len(runs)
    out: dict[str, float] = {"n_seeds": n}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        out.update({key: mean, f"{key}_std": std, f"{key}_ci_low": mean - half, f"{key}_ci_high": mean + half})
    return out
