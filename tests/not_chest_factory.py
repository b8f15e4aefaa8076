"""Inputs that are NOT frontal chest radiographs, for the input gate's tests and
``benchmarks/gate_counts.py``: gray ``photographs`` and ``drawings`` (count, seed, size), and spoiled
radiographs: ``inverted`` and ``windowed`` (a wrong VOI window)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photographs(n: int, seed: int = 0, size: int = 299) -> list[np.ndarray]:
    """``n`` photograph-like gray scenes."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(n):
        horizon = rng.uniform(0.3, 0.7)
        sky = rng.uniform(150, 230) - 60 * yy
        ground = rng.uniform(40, 140) + 30 * np.sin(xx * rng.uniform(5, 30)) * (yy > horizon)
        base = np.where(yy < horizon, sky, ground)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), mode="L")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(0, size * 0.8, 2)
            w, h = rng.uniform(size * 0.08, size * 0.4, 2)
            shade = int(rng.integers(0, 256))
            box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=shade)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        arr = np.asarray(img, dtype=np.float64) + rng.normal(0, rng.uniform(3, 12), (size, size))
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return out


def drawings(n: int, seed: int = 0, size: int = 299) -> list[np.ndarray]:
    """``n`` line drawings: dark strokes, circles and boxes on white."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.new("L", (size, size), int(rng.integers(225, 256)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(6, 20))):
            pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
            width = int(rng.integers(1, 5))
            kind = rng.random()
            if kind < 0.5:
                draw.line(pts, fill=int(rng.integers(0, 80)), width=width)
            else:
                (x0, x1), (y0, y1) = sorted((pts[0][0], pts[1][0])), sorted((pts[0][1], pts[1][1]))
                box = (x0, y0, x1, y1)
                (draw.ellipse if kind < 0.75 else draw.rectangle)(
                    box, outline=int(rng.integers(0, 80)), width=width
                )
        out.append(np.asarray(img, dtype=np.uint8).copy())
    return out


def inverted(grays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The radiographs with their grey levels inverted (a MONOCHROME1 image shown as MONOCHROME2)."""
    return [(255 - np.asarray(g, dtype=np.uint8)).astype(np.uint8) for g in grays]


def windowed(grays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The radiographs crushed into a 16-level grey band around mid-grey (a far too wide VOI window)."""
    return [(118 + np.asarray(g, dtype=np.uint8) // 16).astype(np.uint8) for g in grays]
