"""One synthetic radiograph: anatomy, the class finding, exposure and grain, each from its own stream of the
generator given, so equal generators give the same patient and exposure for every class."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from cxr.data.synthetic.anatomy import Frame, draw_anatomy, grid
from cxr.data.synthetic.findings import FINDINGS
from cxr.errors import ConfigError
from cxr.labels import CLASSES

MIN_SIZE = 32  # smallest image side render_xray draws


class SynthError(ConfigError):
    """A synthetic data set request that cannot be honoured (bad config, label or target folder)."""


def render_xray(label: str, rng: np.random.Generator, size: int = 299) -> np.ndarray:
    """One synthetic PA chest radiograph of ``label``, uint8 ``size x size``, from ``rng`` (advanced)."""
    check_label(label)
    check_size(size)
    anatomy_rng, finding_rng, finish_rng = streams(rng)
    frame = draw_anatomy(render_res(size), anatomy_rng)
    frame.img += FINDINGS[label](frame, finding_rng)
    return finish(frame, finish_rng, size)


def render_with_finding(
    label: str, rng: np.random.Generator, size: int = 299
) -> tuple[np.ndarray, np.ndarray]:
    """``render_xray``'s image (equal ``rng``) and its finding's density, ``size x size`` float32."""
    check_label(label)
    check_size(size)
    anatomy_rng, finding_rng, finish_rng = streams(rng)
    frame = draw_anatomy(render_res(size), anatomy_rng)
    density = FINDINGS[label](frame, finding_rng).astype(np.float32)
    frame.img += density
    at_size = np.asarray(Image.fromarray(density).resize((size, size), Image.Resampling.BILINEAR))
    return finish(frame, finish_rng, size), np.clip(at_size, 0.0, None).astype(np.float32)


def streams(rng: np.random.Generator) -> tuple[np.random.Generator, ...]:
    """Three independent generators (anatomy, finding, exposure) drawn from ``rng``."""
    entropy = [int(x) for x in rng.integers(0, 2**63, size=2)]
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(3))


def check_label(label: str) -> None:
    if label not in FINDINGS:
        raise SynthError(f"unknown class {label!r}", hint=f"the generator draws {CLASSES}")


def check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise SynthError(f"size must be >= {MIN_SIZE} pixels, got {size}", hint="use e.g. 299 or 224")


def render_res(size: int) -> int:
    """Side of the float canvas: 125 px for 299 px images (the anatomy is smooth at that scale)."""
    return max(MIN_SIZE, round(size / 2.4))


@lru_cache(maxsize=4)
def _grain_table(size: int) -> np.ndarray:
    """Fixed unit-variance noise twice the image size; images take a random window of it."""
    table = np.random.default_rng(20240611).standard_normal((2 * size, 2 * size), dtype=np.float32)
    table.setflags(write=False)
    return table


def finish(f: Frame, rng: np.random.Generator, size: int) -> np.ndarray:
    """Exposure, contrast, gamma, upsampling, grain and quantisation to uint8."""
    uniform = rng.uniform
    u0, v0 = grid(f.img.shape[0])
    heel = uniform(-0.04, 0.04) * u0 + uniform(-0.04, 0.04) * v0
    lo, hi = uniform(0.0, 0.1), uniform(0.7, 0.85)
    img = np.clip((f.img + heel - lo) * (1.0 / (hi - lo)), 0.0, 1.0) ** uniform(0.8, 1.25)
    blur = uniform(0.0, 1.0)  # 0 = crisp (bicubic upsampling), 1 = soft (3x3 smoothing, bilinear)
    if blur > 0.3:
        k = 0.8 * (blur - 0.3)
        core = img[1:-1, 1:-1]
        around = img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
        img[1:-1, 1:-1] = (1.0 - k) * core + (0.25 * k) * around
    img += uniform(0.005, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    resample = Image.Resampling.BICUBIC if blur < 0.5 else Image.Resampling.BILINEAR
    up = np.asarray(Image.fromarray(img).resize((size, size), resample))
    grain = _grain_table(size)
    oy, ox = int(rng.integers(0, size)), int(rng.integers(0, size))
    scale = uniform(3.0, 7.0) * (1.0 - 0.5 * blur)
    out = up * 255.0 + grain[oy : oy + size, ox : ox + size] * scale
    return np.clip(out, 0.0, 255.0).astype(np.uint8)
