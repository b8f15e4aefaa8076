"""Takes numeric pixel arrays; makes uint8 ones (``scale_to_u8``); holds the ``DecodeLimits`` decoders check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds checked before any pixel is decoded."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000


DEFAULT_LIMITS = DecodeLimits()


def scale_to_u8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array linearly from its own min..max to 0..255 (rounded); constant -> zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nan)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    if not np.isfinite(lo) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.rint(out), nan=0.0).astype(np.uint8)
