"""What ``Predictor.predict`` accepts: takes a value a caller passes, makes an ``Item`` (a path, bytes, or a uint8
gray array) or raises ``TypeError`` naming what was given and what is accepted."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

Item = Path | str | bytes | np.ndarray
"""One input: a file path, the file's bytes, or a decoded uint8 gray [H, W] array (PIL images and uint8 RGB
[H, W, 3] arrays are converted to gray by ``predict``)."""


def is_single(value: Any) -> bool:
    """Whether ``value`` is one input (a path, bytes, an array, a PIL image), not a sequence of them."""
    return isinstance(value, str | bytes | bytearray | PathLike | np.ndarray) or _is_pil(value)


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert")


def as_item(value: Any) -> Item:
    """One ``predict`` input as an ``Item`` (gray uint8); ``TypeError`` for a value that is no image."""
    if isinstance(value, str | bytes | Path):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, PathLike):
        return Path(value)
    if _is_pil(value):
        return np.asarray(value.convert("L"), dtype=np.uint8)
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (3, 4):
            from PIL import Image

            return np.asarray(Image.fromarray(value[..., :3], mode="RGB").convert("L"), dtype=np.uint8)
        if value.dtype == np.uint8 and value.ndim == 2:
            return value
        raise TypeError(
            f"an array input must be uint8 gray [H, W] or uint8 RGB [H, W, 3], got {value.dtype} "
            f"{list(value.shape)}: scale it to 0..255 and convert with .astype(np.uint8)"
        )
    raise TypeError(
        f"predict cannot read a {type(value).__name__} ({value!r:.60}): pass a path, bytes, a PIL image or a "
        "uint8 array"
    )
