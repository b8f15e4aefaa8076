"""Takes a model's metadata card; makes its per-class operating points (thresholds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cxr.errors import ModelError
from cxr.spec import CARD_OPERATING_POINTS


def operating_thresholds(
    card: Mapping[str, Any], classes: Sequence[str], source: str = "model"
) -> dict[str, float]:
    """{class: threshold} from ``card["operating_points"]`` (empty when the model has none), or a ModelError."""
    points = card.get(CARD_OPERATING_POINTS)
    if not points:
        return {}
    if not isinstance(points, Mapping):
        raise ModelError(
            f"{source}: operating_points in its metadata is {type(points).__name__}, expected a mapping",
            hint="re-fuse the model with `cxr fuse`",
            path=source,
        )
    out: dict[str, float] = {}
    for name, point in points.items():
        threshold = point.get("threshold") if isinstance(point, Mapping) else None
        if name not in classes or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise ModelError(
                f"{source}: operating point {name!r} -> {point!r} is not a class with a finite threshold",
                hint="re-fuse the model with `cxr fuse`",
                path=source,
            )
        out[str(name)] = float(threshold)
    return out
