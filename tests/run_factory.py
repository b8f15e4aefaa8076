"""Synthetic runs for the stacking, fusion and evaluation tests: no images, no training.

Takes: class counts per split, member names and how informative each member is (``SyntheticRun``).
Makes: ``RUN_DIR/manifest.csv`` (+ .json), ``members/<name>/predictions/{val,test}.csv`` (+ .json) and
``members/<name>/best.json``, in the formats the real stages write. A member's probabilities are a softmax
of ``strength * one_hot(label) + noise`` drawn from a seeded generator, so members differ in accuracy and
make partly independent errors (the case where stacking can help). numpy only.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.manifest import BLEND, COLUMNS, SPLITS, load_manifest
from cxr.labels import CLASSES
from cxr.spec import PreprocessSpec
from cxr.train.predictions import PredictionTable, write_predictions


@dataclass(frozen=True)
class SyntheticRun:
    run_dir: Path
    per_class: Mapping[str, tuple[int, int, int]] = field(
        default_factory=lambda: {c: (12, 10, 10) for c in CLASSES}
    )  # class -> (train, val, test) image counts
    members: Mapping[str, float] = field(
        default_factory=lambda: {"alpha": 2.0, "beta": 1.5, "gamma": 1.0, "delta": 1.2, "epsilon": 0.8}
    )  # member -> strength (how far the true class's logit stands out)
    noise: float = 1.0
    seed: int = 0
    classes: tuple[str, ...] = CLASSES
    blend_per_class: int = 0  # > 0: a blend split too (``cxr data split --blend``), with predictions


def _probs(labels: np.ndarray, k: int, strength: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(0.0, noise, size=(labels.size, k)) + strength * np.eye(k)[labels]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_synthetic_run(cfg: SyntheticRun) -> Path:
    """Write the run (see the module docstring); return the run directory."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    counts = {c: (*cfg.per_class.get(c, (0, 0, 0)), cfg.blend_per_class) for c in cfg.classes}
    for s_idx, split in enumerate((*SPLITS, BLEND)):
        for c in cfg.classes:
            for i in range(counts[c][s_idx]):
                path = f"{c}/images/{c}-{split}-{i}.png"
                rows.append((path, c, split, hashlib.sha256(path.encode()).hexdigest()))
    manifest_path = run / "manifest.csv"
    with manifest_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    meta = {"root": str(run / "images"), "classes": list(cfg.classes)}
    manifest_path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    manifest = load_manifest(manifest_path, check_files=False)
    digest = manifest.digest()
    rng = np.random.default_rng(cfg.seed)
    k = len(cfg.classes)
    for name, strength in cfg.members.items():
        sha = hashlib.sha256(f"checkpoint:{name}:{cfg.seed}".encode()).hexdigest()
        pred_dir = run / "members" / name / "predictions"
        for split in ("val", "test", *((BLEND,) if cfg.blend_per_class else ())):
            split_rows = manifest.split(split)
            labels = np.array([cfg.classes.index(r.label) for r in split_rows], dtype=np.int64)
            table = PredictionTable(
                member=name,
                split=split,
                manifest_digest=digest,
                classes=tuple(cfg.classes),
                paths=tuple(r.path for r in split_rows),
                labels=tuple(r.label for r in split_rows),
                probs=_probs(labels, k, strength, cfg.noise, rng),
                checkpoint_sha256=sha,
            )
            write_predictions(table, pred_dir)
        best = {
            "name": name,
            "timm_name": f"synthetic_{name}",
            "classes": list(cfg.classes),
            "preprocess": PreprocessSpec.square(32).to_dict(),
            "metrics": {"strength": strength},
            "sha256": sha,
        }
        (run / "members" / name / "best.json").write_text(json.dumps(best, indent=2), encoding="utf-8")
    return run
