"""Takes the wall seconds of timed calls; makes ``LatencyStats`` in ms (numpy percentiles, outliers counted,
kept)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.errors import ConfigError


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
        times = {
            f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self) if f.type == "float"
        }
        return dataclasses.replace(self, **times)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        floats = {f.name: float(d[f.name]) for f in dataclasses.fields(cls) if f.type == "float"}
        return cls(count=int(d["count"]), outliers=int(d["outliers"]), **floats)


def summarize(seconds: Sequence[float]) -> LatencyStats:
    """Statistics in milliseconds of per-call wall times given in seconds."""
    if len(seconds) == 0:
        raise ConfigError("no timed samples to summarise", hint="measure at least one iteration")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    q1, p50, q3, p90, p95, p99 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90, 95, 99]))
    fence = q3 + 1.5 * (q3 - q1)
    return LatencyStats(
        count=int(ms.size),
        mean=float(ms.mean()),
        std=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min=float(ms.min()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=float(ms.max()),
        outliers=int((ms > fence).sum()),
        outlier_fence=fence,
    )
