"""Latency statistics for cxr-bench: the percentile method is written down here and tested by hand.

Takes: the measured wall-clock seconds of each timed call (one call = one batch) and the batch size.
Makes: ``LatencyStats`` in milliseconds (mean, sample std, min, p50, p90, p95, p99, max) and an outlier count.

Method:
- Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7, numpy's default
  ``method="linear"``): sort the n samples x[0..n-1], let h = (n - 1) * q / 100; the q-th percentile is
  x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]).
- ``std`` is the sample standard deviation (n - 1 in the denominator); 0 for a single sample.
- Nothing is trimmed: every sample enters every statistic. Outliers are reported, not hidden: the slow
  outliers are the samples above Tukey's upper fence, Q3 + 1.5 * (Q3 - Q1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cxr.errors import ConfigError

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation (type 7, see module doc)."""
    if not values:
        raise ConfigError("cannot take a percentile of no samples", hint="measure at least one iteration")
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"percentile {q} is outside 0..100")
    xs = sorted(float(v) for v in values)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call (or per image, see ``scaled``) over ``count`` timed calls."""

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    outliers: int  # samples above Tukey's upper fence (still included in every statistic above)
    outlier_fence: float  # Q3 + 1.5 * IQR, in the same unit

    def scaled(self, factor: float) -> LatencyStats:
        """The same statistics multiplied by ``factor`` (e.g. 1 / batch size for per-image figures)."""
        return LatencyStats(
            count=self.count,
            mean=self.mean * factor,
            std=self.std * factor,
            min=self.min * factor,
            p50=self.p50 * factor,
            p90=self.p90 * factor,
            p95=self.p95 * factor,
            p99=self.p99 * factor,
            max=self.max * factor,
            outliers=self.outliers,
            outlier_fence=self.outlier_fence * factor,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        return cls(
            count=int(d["count"]),
            **{
                k: float(d[k])
                for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max", "outlier_fence")
            },
            outliers=int(d["outliers"]),
        )


def summarize(seconds: Sequence[float]) -> LatencyStats:
    """Statistics in milliseconds of per-call wall times given in seconds."""
    if not seconds:
        raise ConfigError("no timed samples to summarise", hint="measure at least one iteration")
    ms = [float(s) * 1000.0 for s in seconds]
    n = len(ms)
    mean = sum(ms) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / (n - 1)) if n > 1 else 0.0
    q1, q3 = percentile(ms, 25), percentile(ms, 75)
    fence = q3 + 1.5 * (q3 - q1)
    return LatencyStats(
        count=n,
        mean=mean,
        std=std,
        min=min(ms),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        max=max(ms),
        outliers=sum(1 for v in ms if v > fence),
        outlier_fence=fence,
    )
