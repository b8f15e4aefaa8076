"""Paired bootstrap intervals, McNemar's test (exact below ``exact_below`` discordant pairs, else
continuity-corrected chi-square) and Wilson score intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.metrics import macro_f1_from_labels


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None

    def to_list(self) -> list[float | None]:
        return [self.low, self.high]


@dataclass(frozen=True)
class McNemarResult:
    a: str
    b: str
    a_only: int  # images a gets right and b gets wrong
    b_only: int  # images b gets right and a gets wrong
    method: str  # "exact binomial" | "chi-square (continuity-corrected)"
    statistic: float | None  # chi-square value; None for the exact test
    p_value: float

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "a_only_correct": self.a_only,
            "b_only_correct": self.b_only,
            "discordant": self.discordant,
            "method": self.method,
            "statistic": self.statistic,
            "p_value": self.p_value,
        }


NO_INTERVAL = Interval(None, None)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes out of ``n`` under p = 1/2 (doubled smaller tail)."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(lo + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def mcnemar(
    correct_a: np.ndarray, correct_b: np.ndarray, *, a: str = "a", b: str = "b", exact_below: int = 25
) -> McNemarResult:
    ca = np.asarray(correct_a, dtype=bool)
    cb = np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"McNemar: {a} has {ca.size} results but {b} has {cb.size}")
    n01 = int(np.sum(ca & ~cb))
    n10 = int(np.sum(~ca & cb))
    n = n01 + n10
    if n < exact_below:
        return McNemarResult(a, b, n01, n10, "exact binomial", None, binomial_two_sided(n01, n))
    stat = max(abs(n01 - n10) - 1, 0) ** 2 / n
    return McNemarResult(
        a, b, n01, n10, "chi-square (continuity-corrected)", stat, math.erfc(math.sqrt(stat / 2))
    )


def _percentile(values: list[float], level: float) -> Interval:
    if not values:
        return Interval(None, None)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return Interval(float(lo), float(hi))


def bootstrap_intervals(
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    k: int,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    rng: np.random.Generator,
) -> dict[str, dict[str, Interval]]:
    """{method: {"accuracy": Interval, "macro_f1": Interval}}; resamples are shared by all methods."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    y = np.asarray(y_true, dtype=np.int64)
    n = y.size
    acc: dict[str, list[float]] = {m: [] for m in predictions}
    f1: dict[str, list[float]] = {m: [] for m in predictions}
    preds = {m: np.asarray(p, dtype=np.int64) for m, p in predictions.items()}
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        yt = y[idx]
        for m, p in preds.items():
            pp = p[idx]
            acc[m].append(float(np.mean(pp == yt)))
            value = macro_f1_from_labels(yt, pp, k)
            if value is not None:
                f1[m].append(value)
    return {m: {"accuracy": _percentile(acc[m], level), "macro_f1": _percentile(f1[m], level)} for m in preds}


def wilson_interval(k: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of the proportion k/n (no continuity correction); no interval for n = 0."""
    if n <= 0:
        return NO_INTERVAL
    try:
        from scipy.stats import binomtest
    except ImportError:  # the stdlib closed form, where scipy (a scikit-learn dependency) is absent
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + level / 2)
        p, z2 = k / n, z * z
        mid = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return Interval(max(0.0, mid - half), min(1.0, mid + half))
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(float(ci.low), float(ci.high))
