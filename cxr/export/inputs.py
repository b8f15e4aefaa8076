"""The images a run's export verifies and calibrates on: takes a ``RunExportConfig``, makes ``InputPool``.

The pool gives float32 [N, C, H, W] per ``PreprocessSpec``: val images (stratified by class) plus noise for
FP32 parity, val images alone for variants, train images for INT8 calibration; synthetic radiographs stand
in when there is no manifest (``describe()`` says so).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import DataError, DecodeError
from cxr.export.report import MEMBERS_DIR, RunExportConfig
from cxr.spec import PreprocessSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """Decoded uint8 grayscale images and where they came from."""

    grays: tuple[np.ndarray, ...]
    source: str  # "val", "train" or "synthetic"
    note: str | None = None

    def inputs(self, spec: PreprocessSpec) -> np.ndarray:
        from cxr.imaging.preprocess import to_model_input

        if not self.grays:
            return np.zeros((0, spec.channels, *spec.input_size), dtype=np.float32)
        return to_model_input(list(self.grays), spec, normalized=True).astype(np.float32)


class InputPool:
    """Loads the verification (val) and calibration (train) images once; preprocesses them per spec."""

    def __init__(self, cfg: RunExportConfig) -> None:
        self._cfg = cfg
        self._manifest, self._manifest_note = _open_manifest(cfg)
        if self._manifest_note:
            log.warning("%s", self._manifest_note)
        self._sets: dict[str, ImageSet] = {}
        self._cache: dict[tuple[str, PreprocessSpec], np.ndarray] = {}

    def _pre(self, split: str, spec: PreprocessSpec) -> tuple[np.ndarray, ImageSet]:
        cfg = self._cfg
        if split not in self._sets:
            cap, n, seed = (
                (cfg.max_val_images, cfg.n_synthetic, cfg.seed)
                if split == "val"
                else (cfg.max_calib_images, max(cfg.max_calib_images, 1), cfg.seed + 7919)
            )
            found = _split_images(self._manifest, split, cap, cfg.seed)
            self._sets[split] = found or synthetic_images(n, seed, self._manifest_note)
        if (split, spec) not in self._cache:
            self._cache[(split, spec)] = self._sets[split].inputs(spec)
        return self._cache[(split, spec)], self._sets[split]

    def verify_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, dict[str, int]]:
        """Val (or synthetic) images plus noise images, for FP32 parity with PyTorch."""
        real, images = self._pre("val", spec)
        noise = random_inputs(spec, self._cfg.n_random, np.random.default_rng(self._cfg.seed + 1))
        return np.concatenate([real, noise]), {images.source: len(real), "random": len(noise)}

    def variant_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, dict[str, int]]:
        """Val (or synthetic) images only: agreement of a variant is measured on images, not noise."""
        real, images = self._pre("val", spec)
        return real, {images.source: len(images.grays)}

    def calibration_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, str]:
        real, images = self._pre("train", spec)
        return real, images.source

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manifest": None if self._manifest is None else str(self._manifest.path)}
        for key, split in (("verify", "val"), ("calibration", "train")):
            if (images := self._sets.get(split)) is not None:
                out[key] = {"source": images.source, "images": len(images.grays), "note": images.note}
        if self._manifest_note:
            out["note"] = self._manifest_note
        out["random"] = self._cfg.n_random
        return out


def _open_manifest(cfg: RunExportConfig) -> tuple[Any, str | None]:
    """The run's manifest, or None and why the images will be synthetic."""
    from cxr.data.manifest import load_manifest

    candidates = [Path(cfg.manifest)] if cfg.manifest is not None else _manifest_candidates(cfg)
    for path in candidates:
        if path.is_file():
            try:
                return load_manifest(path), None
            except DataError as e:
                if cfg.manifest is not None:
                    raise
                return (
                    None,
                    f"manifest {path} is unusable ({e.message}); verifying on synthetic images instead",
                )
    if cfg.manifest is not None:
        raise DataError(f"manifest {cfg.manifest} does not exist", hint="pass the manifest.csv of the run")
    return None, f"no manifest.csv in {cfg.run_dir}; verifying and calibrating on synthetic images"


def _manifest_candidates(cfg: RunExportConfig) -> list[Path]:
    """RUN_DIR/manifest.csv, then the manifest named in any member's training config."""
    out = [Path(cfg.run_dir) / "manifest.csv"]
    for meta in sorted((Path(cfg.run_dir) / MEMBERS_DIR).glob(f"*/{cfg.which}.json")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8")).get("config", {}).get("data", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, dict) and data.get("manifest"):
            out.append(Path(str(data["manifest"])))
    return out


def _split_images(manifest: Any, split: str, cap: int, seed: int) -> ImageSet | None:
    """Up to ``cap`` decoded images of ``split``, round-robin over classes (seeded); None if there are none."""
    from cxr.imaging.decode import decode_gray

    if manifest is None or cap == 0:
        return None
    rows = manifest.split(split)
    if not rows:
        return None
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Any]] = {}
    for r in rows:
        by_class.setdefault(r.label, []).append(r)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
    order = [q[i] for i in range(max(len(q) for q in queues)) for q in queues if i < len(q)]
    grays: list[np.ndarray] = []
    skipped = 0
    for row in order:
        if len(grays) >= cap:
            break
        try:
            grays.append(decode_gray(manifest.abspath(row)))
        except DecodeError as e:
            skipped += 1
            log.warning("skipping %s", e.message)
    if not grays:
        return None
    note = f"{skipped} unreadable image(s) skipped" if skipped else None
    return ImageSet(tuple(grays), split, note)


def synthetic_images(n: int, seed: int, note: str | None = None, size: int = 256) -> ImageSet:
    """``n`` synthetic radiographs (classes in turn) from ``cxr.data.synthetic``, seeded."""
    from cxr.data.synthetic import render_xray
    from cxr.labels import CLASSES

    rng = np.random.default_rng(seed)
    grays = tuple(render_xray(CLASSES[i % len(CLASSES)], rng, size=size) for i in range(n))
    return ImageSet(grays, "synthetic", note)


def random_inputs(spec: PreprocessSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform-noise grayscale images, normalised like real ones (the range the runtime can feed)."""
    from cxr.imaging.preprocess import normalize

    noise = rng.integers(0, 256, size=(n, 1, *spec.input_size), dtype=np.uint8)
    return normalize(noise, spec).astype(np.float32)
