"""Tiny data sets in both Kaggle layouts, built from distinct synthetic grayscale PNGs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.labels import CLASSES


def write_png(path: Path, seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(path)
    return path


def make_dataset(
    root: Path, counts: Mapping[str, int] | int = 10, layout: str = "kaggle_v4", seed: int = 0
) -> Path:
    """Write ``counts`` distinct images per class; returns the dataset root (the class folders' parent)."""
    per = {c: counts for c in CLASSES} if isinstance(counts, int) else dict(counts)
    for ci, c in enumerate(CLASSES):
        folder = root / c / "images" if layout == "kaggle_v4" else root / c
        folder.mkdir(parents=True, exist_ok=True)
        if layout == "kaggle_v4":
            (root / c / "masks").mkdir(exist_ok=True)
        for i in range(per.get(c, 0)):
            write_png(folder / f"{c}-{i + 1}.png", seed=seed * 100_000 + ci * 10_000 + i)
    return root
