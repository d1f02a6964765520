"""Summary statistics of ratings: mean, standard deviation, 95 % confidence interval; Krippendorff's alpha."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (ddof = 1); nan when n < 2
    ci_low: float  # 95 % confidence interval of the mean (Student's t); nan when n < 2
    ci_high: float
    n: int


def summarize(values) -> Summary:
    """Scores (any sequence of numbers, n >= 1) -> `Summary`. The CI treats ratings as independent."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("no ratings to summarise")
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, n)
    std = float(x.std(ddof=1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


def krippendorff_alpha(units: dict, metric: str = "interval") -> float:
    """Krippendorff's alpha over `units` {unit: [value by each rater who rated it]}.

    metric: "interval" (squared difference) or "nominal" (0/1). Units with fewer than two values
    are not pairable and are skipped. Returns nan when nothing is pairable or every value is equal.
    """
    groups = [np.asarray(v, dtype=np.float64) for v in units.values() if len(v) >= 2]
    if not groups:
        return math.nan

    def delta(a, b):
        d = a[:, None] - b[None, :]
        return d ** 2 if metric == "interval" else (d != 0).astype(np.float64)

    if metric not in ("interval", "nominal"):
        raise ValueError(f"metric must be 'interval' or 'nominal' (got {metric!r})")
    pooled = np.concatenate(groups)
    n = len(pooled)
    observed = sum(delta(g, g).sum() / (len(g) - 1) for g in groups) / n
    expected = delta(pooled, pooled).sum() / (n * (n - 1))
    return math.nan if expected == 0 else float(1.0 - observed / expected)
