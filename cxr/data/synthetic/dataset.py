"""Write a synthetic data set in the Kaggle v4 layout: ``<out>/COVID-19_Radiography_Dataset/<Class>/images/
<Class>-<i>.png`` (i from 1), empty ``masks/`` and ``SYNTHETIC.txt``. Image i of a class has its own
generator (``image_rng``), so it does not depend on how many images or classes are drawn, or their order."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.synthetic.render import SynthError, check_label, check_size, render_xray
from cxr.labels import CLASSES, REAL_COUNTS

DATASET_DIRNAME = "COVID-19_Radiography_Dataset"  # as in the Kaggle v4 archive
MARKER_FILE = "SYNTHETIC.txt"  # so nobody mistakes the data set for real patients


@dataclass(frozen=True)
class SynthConfig:
    """``imbalance``: the same total, split in proportion to ``REAL_COUNTS`` (each class at least 1)."""

    out_dir: Path
    per_class: int = 50
    seed: int = 0
    size: int = 299
    imbalance: bool = False
    classes: tuple[str, ...] = CLASSES


@dataclass(frozen=True)
class SynthResult:
    root: Path
    counts: dict[str, int]
    seconds: float


def synthesize(cfg: SynthConfig) -> SynthResult:
    """Write the data set under ``cfg.out_dir`` (staged, then renamed); ``SynthError`` on a bad config."""
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
                pixels = render_xray(label, image_rng(cfg.seed, class_idx, i), cfg.size)
                (images / f"{label}-{i}.png").write_bytes(encode_png(pixels))
        (staging / MARKER_FILE).write_text(
            "Synthetic chest radiographs made by cxr.data.synthetic - not real patients.\n"
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
    """Images per class ``synthesize`` writes (imbalanced: by largest remainder); checks the config."""
    check_config(cfg)
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


def check_config(cfg: SynthConfig) -> None:
    if cfg.per_class < 1:
        raise SynthError(
            f"per_class must be >= 1, got {cfg.per_class}", hint="ask for at least one image per class"
        )
    if cfg.seed < 0:
        raise SynthError(f"seed must be >= 0, got {cfg.seed}", hint="pass a non-negative integer seed")
    check_size(cfg.size)
    if not cfg.classes:
        raise SynthError("classes is empty", hint=f"pass a non-empty subset of {CLASSES}")
    if len(set(cfg.classes)) != len(cfg.classes):
        raise SynthError(f"classes has duplicates: {cfg.classes}", hint="list each class once")
    for label in cfg.classes:
        check_label(label)


def image_rng(seed: int, class_idx: int, index: int) -> np.random.Generator:
    """Own generator of image ``index`` of class ``class_idx``: independent of order and count."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_idx, index)))


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG: the "Up" filter on every row, run-length deflate."""
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
