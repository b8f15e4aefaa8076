"""Out-of-fold (K-fold) predictions for the meta-learner, for users who can afford K trainings per member.

Takes: for each member, K models each trained without one fold of the training split, and each model's
predictions on its held-out fold. Makes/reads: ``members/<name>/predictions/oof.csv`` (a normal prediction
table whose split is ``"oof"``) and ``oof.folds.json`` beside it, the evidence that no row leaks:
``{"member", "manifest_digest", "k", "fold_of": {path: fold}, "train_paths": [[paths fold 0 trained on],
...]}``. ``check_oof`` refuses a row whose fold model trained on its image, a row without a fold, and any
validation or test image. ``stratified_folds`` assigns folds for the trainer. numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.manifest import Manifest
from cxr.errors import DataError
from cxr.train.meta_features import LeakageError, check_split_membership
from cxr.train.predictions import PredictionTable, write_predictions

OOF_SPLIT = "oof"


@dataclass(frozen=True)
class FoldRecord:
    member: str
    manifest_digest: str
    k: int
    fold_of: Mapping[str, int]  # image path -> the fold whose model predicted it
    train_paths: tuple[frozenset[str], ...]  # per fold, the images that fold's model trained on


def folds_path(directory: Path) -> Path:
    return Path(directory) / f"{OOF_SPLIT}.folds.json"


def stratified_folds(
    paths: Sequence[str], labels: Sequence[str], k: int, *, rng: np.random.Generator
) -> dict[str, int]:
    """Assign each path a fold in 0..k-1, spreading every class evenly over the folds."""
    if k < 2:
        raise DataError(f"K-fold needs k >= 2, got {k}", hint="use k = 5 (or 2 to save time)")
    out: dict[str, int] = {}
    for label in sorted(set(labels)):
        group = [p for p, lab in zip(paths, labels, strict=True) if lab == label]
        start = int(rng.integers(k))
        for rank, i in enumerate(rng.permutation(len(group))):
            out[group[int(i)]] = (start + rank) % k
    return out


def write_oof(table: PredictionTable, folds: FoldRecord, directory: Path) -> Path:
    """Write ``oof.csv`` (+ .json) and ``oof.folds.json`` into ``directory``; return the CSV path."""
    if table.split != OOF_SPLIT:
        raise DataError(f"an out-of-fold table must have split '{OOF_SPLIT}', got '{table.split}'")
    out = write_predictions(table, directory)
    record = {
        "member": folds.member,
        "manifest_digest": folds.manifest_digest,
        "k": folds.k,
        "fold_of": dict(folds.fold_of),
        "train_paths": [sorted(s) for s in folds.train_paths],
    }
    folds_path(directory).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return out


def read_folds(directory: Path) -> FoldRecord:
    path = folds_path(directory)
    if not path.is_file():
        raise LeakageError(
            f"{path} is missing: without it nothing proves the out-of-fold predictions beside it are out of fold",
            hint="write out-of-fold predictions with cxr.train.meta_oof.write_oof, or use --source val",
            path=path,
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return FoldRecord(
            member=str(raw["member"]),
            manifest_digest=str(raw["manifest_digest"]),
            k=int(raw["k"]),
            fold_of={str(p): int(f) for p, f in raw["fold_of"].items()},
            train_paths=tuple(frozenset(str(p) for p in fold) for fold in raw["train_paths"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is malformed: {e}", hint="re-write it with write_oof", path=path) from e


def check_oof(table: PredictionTable, folds: FoldRecord, manifest: Manifest) -> None:
    """Refuse out-of-fold predictions that are not provably out of fold (see the module docstring)."""
    who = f"member '{table.member}' out-of-fold predictions"
    if folds.member != table.member or folds.manifest_digest != table.manifest_digest:
        raise DataError(
            f"{who}: the fold record belongs to member '{folds.member}' / manifest {folds.manifest_digest}, "
            f"the predictions to '{table.member}' / {table.manifest_digest}",
            hint="re-write both files together with write_oof",
        )
    if len(folds.train_paths) != folds.k:
        raise DataError(f"{who}: k = {folds.k} but {len(folds.train_paths)} training lists are recorded")
    check_split_membership(table.paths, manifest, {"train"}, what=who)
    test = {r.path for r in manifest.split("test")}
    for f, trained in enumerate(folds.train_paths):
        seen = sorted(trained & test)
        if seen:
            raise LeakageError(
                f"{who}: the fold-{f} model trained on {len(seen)} test image(s) (first: {seen[0]})",
                hint="fold models may train on the training split only",
            )
    for p in table.paths:
        fold = folds.fold_of.get(p)
        if fold is None or not 0 <= fold < folds.k:
            raise LeakageError(
                f"{who}: image {p} has no valid fold (got {fold!r}), so nothing proves it was held out",
                hint="record the fold of every predicted image",
            )
        if p in folds.train_paths[fold]:
            raise LeakageError(
                f"{who}: image {p} was predicted by the fold-{fold} model, which trained on it",
                hint="predict each image with the model of the fold that held it out",
            )
