"""Synthetic chest radiographs: the embedded default data set.

The real COVID-19 Radiography Database cannot ship with the project, so the demo and the tests use
images drawn here instead. :func:`synthesize` writes them in the Kaggle v4 layout::

    out_dir/COVID-19_Radiography_Dataset/<Class>/images/<Class>-<i>.png   (i from 1)
    out_dir/COVID-19_Radiography_Dataset/<Class>/masks/                  (empty)
    out_dir/COVID-19_Radiography_Dataset/SYNTHETIC.txt                   (provenance note)

Each image is an 8-bit grayscale PNG of a posterior-anterior chest radiograph built from smooth
primitives: thorax soft tissue, two radiolucent lung fields, posterior ribs, clavicles, spine,
mediastinum, heart shadow and diaphragm domes, with random positioning, anatomy, exposure, noise
and blur. Class findings are drawn inside the lung fields:

* ``COVID``: bilateral, peripheral, patchy ground-glass opacities in upper and lower zones;
* ``Lung_Opacity``: one or two dense focal consolidations, usually on one side;
* ``Viral Pneumonia``: bilateral reticular, streaky interstitial pattern in the lower zones;
* ``Normal``: none.

Findings vary in severity, and some are subtle, so a classifier can learn the task but should not
reach perfect accuracy. Image ``i`` of class ``label`` is
``render_xray(label, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CLASSES.index(label), i))))``,
so an image does not depend on how many images are drawn, which classes, or in which order.
The module needs numpy and Pillow only.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.errors import ConfigError
from cxr.labels import CLASSES, REAL_COUNTS

__all__ = [
    "DATASET_DIRNAME",
    "SynthConfig",
    "SynthError",
    "SynthResult",
    "contact_sheet",
    "plan_counts",
    "render_xray",
    "synthesize",
]

DATASET_DIRNAME = "COVID-19_Radiography_Dataset"
"""Name of the data set folder, as in the Kaggle v4 archive."""

MIN_SIZE = 32
SHEET_TILE = 160
SHEET_CAPTION = "SYNTHETIC - not real patients"
MARKER_FILE = "SYNTHETIC.txt"
"""Written beside the class folders so nobody mistakes the data set for real patients."""


class SynthError(ConfigError):
    """A synthetic data set request that cannot be honoured (bad config, label or target folder)."""


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize and where.

    ``per_class`` is the number of images per class. With ``imbalance`` the total stays
    ``per_class * len(classes)`` but is split in proportion to the real class counts
    (:data:`cxr.labels.REAL_COUNTS`), each class getting at least one image.
    """

    out_dir: Path
    per_class: int = 50
    seed: int = 0
    size: int = 299
    imbalance: bool = False
    classes: tuple[str, ...] = CLASSES


@dataclass(frozen=True)
class SynthResult:
    """Where the data set was written, how many images per class, and how long it took."""

    root: Path
    counts: dict[str, int]
    seconds: float


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def synthesize(cfg: SynthConfig) -> SynthResult:
    """Write a synthetic data set in the Kaggle v4 layout under ``cfg.out_dir``.

    The folder is built under a temporary name inside ``out_dir`` and renamed at the end, so an
    interrupted run leaves no half-written data set behind.

    Raises:
        SynthError: ``per_class < 1``, ``size < 32``, ``seed < 0``, an unknown class name, or an
            ``out_dir`` that already holds a non-empty ``COVID-19_Radiography_Dataset``.
    """
    start = time.perf_counter()
    counts = plan_counts(cfg)
    out_dir = Path(cfg.out_dir)
    root = out_dir / DATASET_DIRNAME
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SynthError(
            f"{root} already exists and is not an empty folder",
            hint="choose another out_dir, or delete that folder to synthesize a fresh data set",
            path=root,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))
    try:
        for label, n in counts.items():
            class_idx = CLASSES.index(label)
            images = staging / label / "images"
            images.mkdir(parents=True)
            (staging / label / "masks").mkdir()
            for i in range(1, n + 1):
                pixels = render_xray(label, _image_rng(cfg.seed, class_idx, i), cfg.size)
                (images / f"{label}-{i}.png").write_bytes(_encode_png(pixels))
        (staging / MARKER_FILE).write_text(
            "Synthetic chest radiographs made by cxr.data.synth - not real patients.\n"
            f"seed={cfg.seed} size={cfg.size} counts={counts}\n",
            encoding="utf-8",
        )
        if root.exists():
            root.rmdir()  # an empty folder, checked above
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthResult(root=root, counts=counts, seconds=time.perf_counter() - start)


def plan_counts(cfg: SynthConfig) -> dict[str, int]:
    """Images per class that :func:`synthesize` writes for ``cfg``; checks the config first.

    Balanced: ``per_class`` each. Imbalanced: ``per_class * len(classes)`` in total, split in
    proportion to the real class counts by largest remainder, each class at least 1.

    Raises:
        SynthError: ``per_class < 1``, ``size < 32``, ``seed < 0``, or bad ``classes``.
    """
    _check_config(cfg)
    if not cfg.imbalance:
        return {label: cfg.per_class for label in cfg.classes}
    total = cfg.per_class * len(cfg.classes)
    weights = np.array([REAL_COUNTS[label] for label in cfg.classes], dtype=np.float64)
    share = weights / weights.sum() * total
    counts = np.maximum(np.floor(share).astype(np.int64), 1)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    k = 0
    while counts.sum() < total:
        counts[order[k % len(order)]] += 1
        k += 1
    while counts.sum() > total:  # only when the floor of 1 pushed small classes up
        counts[int(np.argmax(counts))] -= 1
    return {label: int(c) for label, c in zip(cfg.classes, counts, strict=True)}


def render_xray(label: str, rng: np.random.Generator, size: int = 299) -> np.ndarray:
    """Draw one synthetic PA chest radiograph of class ``label`` as a ``size x size`` uint8 array.

    The image depends only on ``label``, ``size`` and the state of ``rng``.

    Raises:
        SynthError: unknown ``label`` or ``size < 32``.
    """
    _check_label(label)
    _check_size(size)
    frame = _anatomy(_render_res(size), rng)
    _FINDINGS[label](frame, rng)
    return _finish(frame, rng, size)


def contact_sheet(images_by_class: dict[str, list[np.ndarray]], path: Path) -> Path:
    """Save a PNG grid, one row per class (name as row label), captioned as synthetic.

    Tiles are resized to 160 px. Returns ``path``.

    Raises:
        SynthError: no images, or an image that is not a 2-D uint8 array.
    """
    rows = [(label, imgs) for label, imgs in images_by_class.items() if len(imgs)]
    if not rows:
        raise SynthError("contact_sheet got no images", hint="pass at least one image for at least one class")
    font = ImageFont.load_default()
    tile, pad, label_w, head_h = SHEET_TILE, 6, 130, 28
    cols = max(len(imgs) for _, imgs in rows)
    sheet = Image.new(
        "L", (label_w + cols * (tile + pad) + pad, head_h + len(rows) * (tile + pad) + pad), color=255
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), SHEET_CAPTION, fill=0, font=font)
    for r, (label, imgs) in enumerate(rows):
        y = head_h + r * (tile + pad)
        draw.text((pad, y + tile // 2 - 6), label, fill=0, font=font)
        for c, img in enumerate(imgs):
            arr = np.asarray(img)
            if arr.ndim != 2 or arr.dtype != np.uint8:
                raise SynthError(
                    f"contact_sheet image {c} of {label!r} has shape {arr.shape} and dtype {arr.dtype}",
                    hint="pass 2-D uint8 arrays as returned by render_xray",
                )
            thumb = Image.fromarray(arr).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (label_w + c * (tile + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path


# --------------------------------------------------------------------------------------------
# Checks, seeding and PNG encoding
# --------------------------------------------------------------------------------------------


def _check_config(cfg: SynthConfig) -> None:
    if cfg.per_class < 1:
        raise SynthError(
            f"per_class must be >= 1, got {cfg.per_class}", hint="ask for at least one image per class"
        )
    if cfg.seed < 0:
        raise SynthError(f"seed must be >= 0, got {cfg.seed}", hint="pass a non-negative integer seed")
    _check_size(cfg.size)
    if not cfg.classes:
        raise SynthError("classes is empty", hint=f"pass a non-empty subset of {CLASSES}")
    if len(set(cfg.classes)) != len(cfg.classes):
        raise SynthError(f"classes has duplicates: {cfg.classes}", hint="list each class once")
    for label in cfg.classes:
        _check_label(label)


def _check_label(label: str) -> None:
    if label not in _FINDINGS:
        raise SynthError(f"unknown class {label!r}", hint=f"the generator draws {CLASSES}")


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise SynthError(f"size must be >= {MIN_SIZE} pixels, got {size}", hint="use e.g. 299 or 224")


def _image_rng(seed: int, class_idx: int, index: int) -> np.random.Generator:
    """Own generator of image ``index`` of class ``class_idx``: independent of order and count."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_idx, index)))


def _encode_png(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG.

    A plain encoder: the "Up" filter on every row, then run-length deflate. The residuals of a
    noisy radiograph are noise-like, so string matching gains little: the files are as small as
    Pillow's and written 2-3x faster (Pillow tries every filter on every row).
    """
    h, w = pixels.shape
    rows = np.empty((h, w + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type Up: byte minus the byte above, modulo 256
    rows[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", packer.compress(rows.tobytes()) + packer.flush())
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# Rendering. Everything is drawn at about 40 % resolution on float32 grids in [-1, 1] and
# upsampled at the end; radiographs are smooth, and this keeps the generator fast.
# Image left is the patient's right (PA view): the heart bulges to the image right.
# --------------------------------------------------------------------------------------------


def _render_res(size: int) -> int:
    """Side of the float canvas: 125 px for 299 px images (the anatomy is smooth at that scale)."""
    return max(MIN_SIZE, round(size / 2.4))


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


@lru_cache(maxsize=4)
def _grain_table(size: int) -> np.ndarray:
    """Fixed unit-variance noise twice the image size; images take a random window of it."""
    table = np.random.default_rng(20240611).standard_normal((2 * size, 2 * size), dtype=np.float32)
    table.setflags(write=False)
    return table


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 to 1 around ``x == 0`` over ``width``."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Unit-scale random field with about ``cells`` blobs across, as an ``n x n`` float32 array."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse).resize((n, n), Image.Resampling.BICUBIC)
    return np.asarray(field)


@dataclass
class _Frame:
    """Canvas plus the patient geometry that findings need (all arrays n x n float32)."""

    img: np.ndarray
    u: np.ndarray  # patient coordinates after positioning: lateral, + is image right
    v: np.ndarray  # patient coordinates: + is caudal
    lung: np.ndarray  # 0..1 lung field mask
    depth: np.ndarray  # 0 apex .. 1 diaphragm, per pixel, per side
    lateral: np.ndarray  # 0 lung centre line .. 1 lateral border (negative towards medial)
    vessels: np.ndarray  # 0..1 bronchovascular markings pattern
    top: float
    dia: tuple[float, float]  # dome height of image-left and image-right hemidiaphragm
    centre: Callable[[float], float]  # lung centre line |u| at height v
    half: Callable[[float], float]  # lung half width at height v


def _anatomy(n: int, rng: np.random.Generator) -> _Frame:
    u0, v0 = _grid(n)
    uniform = rng.uniform

    # Positioning: small rotation, scale and shift of the patient in the field.
    rot, scale = uniform(-0.06, 0.06), uniform(0.9, 1.04)
    tx, ty = uniform(-0.05, 0.05), uniform(-0.04, 0.07)
    cr, sr = math.cos(rot), math.sin(rot)
    du, dv = u0 - tx, v0 - ty
    u = (cr * du + sr * dv) * (1.0 / scale)
    v = (cr * dv - sr * du) * (1.0 / scale)
    d = np.abs(u)
    right = u > 0

    # Habitus.
    width = uniform(0.86, 0.96)
    soft = uniform(0.5, 0.6)
    lung_dark = uniform(0.3, 0.38)
    bone = uniform(0.06, 0.1)
    top = uniform(-0.78, -0.68)
    dia_l = uniform(0.3, 0.42)  # image left = patient right, usually higher
    dia_r = dia_l + uniform(0.0, 0.08)
    c_apex, c_base = width * uniform(0.34, 0.38), width * uniform(0.47, 0.5)
    h_max = width * uniform(0.38, 0.42)

    def centre(y: float) -> float:
        s = min(1.0, max(0.0, (y - top) / (dia_l - top)))
        return c_apex + (c_base - c_apex) * min(1.0, s / 0.6)

    def half(y: float) -> float:
        s = min(1.0, max(0.0, (y - top) / (dia_l - top)))
        return h_max * math.sqrt(min(1.0, s / 0.4)) * (0.8 + 0.2 * s)

    # Thorax soft tissue: shoulders, neck, a cylinder-like thickness profile, sometimes arms.
    a = width * (0.95 + 0.05 * v)
    thick = np.sqrt(np.clip(1.0 - (u / a) ** 2, 0.0, 1.0))
    neck = np.clip((d - 0.22) * (1.0 / (0.75 * width)), 0.0, None)
    shoulders = _ramp(v - (-1.1 + 0.5 * neck * np.sqrt(neck)), 0.08)
    tissue = _ramp(a - d, 0.04) * shoulders
    img = 0.02 + soft * tissue * (0.2 + 0.8 * thick)
    arms = uniform(0.0, 0.7)
    img += arms * soft * _ramp(d - a - 0.03, 0.04) * _ramp(a + 0.25 - d, 0.1) * _ramp(0.2 - v, 0.6)

    # Lung fields: rounded apices, convex lateral borders, domed bases with sharp angles.
    dia = np.where(right, np.float32(dia_r), np.float32(dia_l))
    depth = np.clip((v - top) / (dia - top), 0.0, 1.0)
    c_v = c_apex + (c_base - c_apex) * np.clip(depth * (1.0 / 0.6), 0.0, 1.0)
    hw = h_max * np.sqrt(np.clip(depth * (1.0 / 0.4), 0.0, 1.0)) * (0.8 + 0.2 * depth) + 1e-3
    off = d - c_v
    lateral = off / hw
    dome = dia + 0.22 * np.clip(lateral, -1.2, 1.2) ** 2
    lung = _ramp(hw - np.abs(off), 0.045) * _ramp(dome - v, 0.03) * _ramp(v - top, 0.03)
    profile = np.sqrt(np.clip(1.0 - lateral**2, 0.0, 1.0))

    # Heart: soft-tissue density in front of the lungs, bulging to the image right.
    hx, hy = uniform(0.04, 0.09), dia_r + uniform(-0.04, 0.02)
    hrx, hry = width * uniform(0.42, 0.52), uniform(0.36, 0.42)
    rx = np.where(u > hx, np.float32(hrx), np.float32(hrx * 0.45))
    r2 = ((u - hx) / rx) ** 2 + ((v - hy) * (1.0 / hry)) ** 2
    heart = np.clip((1.0 - r2) * 6.0, 0.0, 1.0)
    # Mediastinum above it, widening towards the heart.
    mw = 0.14 + 0.08 * np.clip(v - top, 0.0, 1.0)
    med = _ramp(mw - d, 0.05) * _ramp(hy - v, 0.2)
    knob = np.clip((1.0 - ((u - 0.11) ** 2 + (v - top - 0.38) ** 2) * (1.0 / 0.08**2)) * 2.0, 0, 1)
    front = np.maximum(np.maximum(heart, med), knob)
    img -= lung_dark * lung * (0.72 + 0.28 * profile) * (1.0 - 0.85 * front)
    img += (0.06 * heart + 0.04 * med) * _ramp(dome - v, 0.05)

    # Abdomen below the domes, trachea, spine.
    img += uniform(0.0, 0.05) * tissue * _ramp(v - dome, 0.05)
    img -= 0.08 * _ramp(0.035 - np.abs(u + 0.01), 0.02) * _ramp(top + 0.35 - v, 0.08)
    spine_ph = uniform(0.0, 1.0)
    vert = 0.85 + 0.15 * np.cos((v * (1.0 / 0.1) + spine_ph) * (2 * math.pi))
    img += bone * 0.7 * _ramp(0.075 - d, 0.04) * vert * (1.0 - 0.6 * heart) * shoulders
    lung = lung * (1.0 - 0.8 * front)

    # Posterior ribs: arcs rising a little from the spine and falling laterally, spacing
    # widening caudally, brighter where they cross aerated lung. A warp keeps them irregular.
    warp = _smooth_noise(rng, n, 4)
    curve = (-0.3 * d + 0.75 * d * d) * uniform(0.85, 1.15)
    w = v - curve
    spacing = uniform(0.1, 0.12)
    phase = (w - top) * (1.0 / spacing) * (1.0 - 0.12 * (w - top)) + uniform(0.0, 1.0)
    phase += 0.12 * warp
    band = np.clip((np.cos(phase * (2 * math.pi)) - 0.2) * 1.4, 0.0, 1.0)
    cage = (
        _ramp(a - 0.06 - d, 0.08)
        * _ramp(d - 0.08, 0.05)
        * _ramp(v - top + 0.15, 0.08)
        * _ramp(dome + 0.05 - v, 0.1)
    )
    img += bone * band * cage * (0.3 + 0.7 * lung)
    # Anterior ribs: fainter, sloping down towards the midline.
    ant = np.cos((v + 0.55 * d) * (1.0 / 0.2) * (2 * math.pi) + uniform(0.0, 6.3))
    img += bone * 0.5 * np.clip(ant - 0.4, 0.0, 1.0) * lung * _ramp(d - 0.2, 0.1)

    # Clavicles: from the sternal notch out and up to the shoulders.
    cy = top + uniform(0.1, 0.2)
    clav_line = v - (cy - 0.45 * (d - 0.08) + 0.25 * (d - 0.08) ** 2)
    clav = np.sqrt(np.clip(1.0 - np.abs(clav_line) * (1.0 / 0.035), 0.0, 1.0))
    img += bone * 1.3 * clav * _ramp(d - 0.09, 0.04) * _ramp(0.72 * width - d, 0.08)

    # Breast shadows (sometimes) and gastric bubble under the left hemidiaphragm (image right).
    if rng.random() < 0.5:
        edge = dia_l + 0.05 + 0.5 * (d - 0.55) ** 2 + uniform(-0.05, 0.05)
        img += (
            uniform(0.04, 0.1)
            * _ramp(edge - v, 0.03)
            * np.clip((v - edge + 0.5) * 2.0, 0.0, 1.0)
            * _ramp(d - 0.3, 0.2)
            * tissue
        )
    if rng.random() < 0.6:
        gx, gy = uniform(0.25, 0.45), dia_r + uniform(0.1, 0.16)
        gas = ((u - gx) * (1.0 / 0.1)) ** 2 + ((v - gy) * (1.0 / 0.055)) ** 2
        img -= uniform(0.05, 0.12) * np.clip(1.0 - gas, 0.0, 1.0) ** 0.5 * _ramp(v - dome, 0.02)

    # Hila and bronchovascular markings fanning out from them, fading to the periphery.
    hdx, hdy = d - 0.17, v - (top + 0.62)
    radius = np.sqrt(hdx * hdx + hdy * hdy)
    angle = np.arctan2(hdy, hdx)
    fade = np.clip(1.0 - radius * (1.0 / 0.75), 0.0, 1.0) ** 3
    vessels = np.clip(np.cos(angle * 16.0 + 2.5 * warp) - 0.5, 0.0, 1.0) * fade
    img += uniform(0.16, 0.26) * vessels * lung
    hilum = np.clip(1.0 - radius * radius * (1.0 / 0.03), 0.0, 1.0) ** 2
    img += uniform(0.05, 0.09) * hilum * _ramp(d - 0.1, 0.05)

    # A small calcified granuloma now and then, in any class.
    if rng.random() < 0.15:
        side = 1.0 if rng.random() < 0.5 else -1.0
        gy = top + uniform(0.2, 0.9) * (dia_l - top)
        gx = side * (centre(gy) + half(gy) * uniform(-0.6, 0.6))
        gran = np.clip(1.0 - ((u - gx) ** 2 + (v - gy) ** 2) * (1.0 / 0.018**2), 0.0, 1.0)
        img += uniform(0.15, 0.3) * gran

    return _Frame(
        img=img,
        u=u,
        v=v,
        lung=lung,
        depth=depth,
        lateral=lateral,
        vessels=vessels,
        top=top,
        dia=(dia_l, dia_r),
        centre=centre,
        half=half,
    )


def _lung_point(
    f: _Frame, rng: np.random.Generator, side: float, depth: tuple[float, float], lateral: tuple[float, float]
) -> tuple[float, float]:
    """A point inside one lung: ``side`` -1 image left / +1 image right, fractions of height/width."""
    dia = f.dia[0] if side < 0 else f.dia[1]
    y = f.top + rng.uniform(*depth) * (dia - f.top)
    x = side * (f.centre(y) + f.half(y) * rng.uniform(*lateral))
    return x, y


def _severity(rng: np.random.Generator) -> float:
    """0.1..1, skewed so most findings are moderate and a few are subtle."""
    return 0.1 + 0.9 * float(rng.beta(2.2, 1.6))


def _normal(f: _Frame, rng: np.random.Generator) -> None:
    """No finding."""


def _covid(f: _Frame, rng: np.random.Generator) -> None:
    """Bilateral, peripheral, patchy ground-glass opacities in upper and lower zones."""
    sev = _severity(rng)
    acc = np.zeros_like(f.img)
    for side in (-1.0, 1.0):
        for zone in ((0.15, 0.5), (0.5, 0.92)):
            for _ in range(int(rng.integers(1, 4))):
                x, y = _lung_point(f, rng, side, zone, (0.2, 0.85))
                s = rng.uniform(0.06, 0.13)
                r2 = ((f.u - x) ** 2 + (f.v - y) ** 2) * (1.0 / (2 * s * s))
                acc += rng.uniform(0.5, 1.0) * np.exp(-r2)
    patchy = 0.55 + 0.45 * np.clip(_smooth_noise(rng, f.img.shape[0], 14), -1.0, 1.0)
    periph = np.clip(0.6 + 0.6 * f.lateral, 0.2, 1.0)
    f.img += 0.26 * sev * np.minimum(acc, 1.3) * patchy * periph * f.lung


def _lung_opacity(f: _Frame, rng: np.random.Generator) -> None:
    """One or two dense focal consolidations, usually unilateral."""
    sev = 0.3 + 0.7 * float(rng.beta(2.0, 1.5))
    n_blobs = 1 if rng.random() < 0.6 else 2
    first = -1.0 if rng.random() < 0.5 else 1.0
    noise = _smooth_noise(rng, f.img.shape[0], 10)
    acc = np.zeros_like(f.img)
    for k in range(n_blobs):
        side = first if k == 0 or rng.random() < 0.7 else -first
        x, y = _lung_point(f, rng, side, (0.25, 0.9), (-0.5, 0.6))
        sa, sb = rng.uniform(0.1, 0.2), rng.uniform(0.08, 0.14)
        th = rng.uniform(0.0, math.pi)
        ct, st = math.cos(th), math.sin(th)
        du, dv = f.u - x, f.v - y
        r2 = (du * ct + dv * st) ** 2 * (1.0 / sa**2) + (dv * ct - du * st) ** 2 * (1.0 / sb**2)
        r2 *= 1.0 + 0.35 * noise
        r2 = np.maximum(r2, 0.0)
        acc += rng.uniform(0.7, 1.0) * np.exp(-r2 * np.sqrt(r2))  # flat-topped, sharper edge
    f.img += 0.38 * sev * np.minimum(acc, 1.0) * (0.85 + 0.15 * noise) * f.lung


def _viral_pneumonia(f: _Frame, rng: np.random.Generator) -> None:
    """Bilateral interstitial reticular and streaky pattern, lower zones predominant."""
    sev = _severity(rng)
    n = f.img.shape[0]
    field = _smooth_noise(rng, n, max(8, n // 5))
    net = np.clip(1.0 - np.abs(field) * (1.0 / 0.3), 0.0, 1.0) ** 2
    lower = _ramp(f.depth - rng.uniform(0.35, 0.55), 0.35)
    sides = np.where(f.u > 0, np.float32(rng.uniform(0.6, 1.0)), np.float32(rng.uniform(0.6, 1.0)))
    pattern = 0.75 * net + 0.6 * f.vessels + 0.15
    f.img += 0.26 * sev * pattern * lower * sides * f.lung


_FINDINGS: dict[str, Callable[[_Frame, np.random.Generator], None]] = {
    "COVID": _covid,
    "Lung_Opacity": _lung_opacity,
    "Normal": _normal,
    "Viral Pneumonia": _viral_pneumonia,
}


def _finish(f: _Frame, rng: np.random.Generator, size: int) -> np.ndarray:
    """Exposure, contrast, gamma, upsampling, grain and quantisation to uint8."""
    uniform = rng.uniform
    u0, v0 = _grid(f.img.shape[0])
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
