"""The split manifest: which image is in train, val, blend or test, decided once and reused by every stage.

Takes: a data set folder (``SplitConfig``). Makes: ``manifest.csv`` (path relative to the data root, class,
split, sha256 of the decoded pixels) and ``manifest.json`` beside it. Exact duplicates are found by pixel
hash (one copy kept within a class; across classes all are excluded as label conflicts); near-duplicates
(``cxr.data.near_duplicates``) are kept but each group goes to ONE split. The split is stratified per class
and seeded over groups; a rare class fills train first, then val, then test. With ``folds`` K the manifest
is fold ``fold`` of a K-fold cross-validation: across the K manifests every image is tested once.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data import near_duplicates as nd
from cxr.data.layout import DatasetScan, scan_dataset
from cxr.errors import DataError, DecodeError
from cxr.imaging.decode import pixel_hash
from cxr.labels import CLASSES

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
BLEND = "blend"  # optional: images only the meta-learner sees (val keeps to early stopping)
ALL_SPLITS: tuple[str, ...] = ("train", "val", BLEND, "test")
COLUMNS = ("path", "class", "split", "sha256")
Unit = list[tuple[str, str, str]]  # (relpath, class, sha) of images that go to one split together


@dataclass(frozen=True)
class SplitConfig:
    data_dir: Path
    out: Path
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    classes: tuple[str, ...] = CLASSES
    blend: float = 0.0  # fraction of each class carved out of train for a separate blend split
    near_duplicate_threshold: int | None = nd.DEFAULT_THRESHOLD  # None: no near-duplicate grouping
    folds: int = 0  # cross-validation: K folds, test fraction 1/K; 0: one plain split
    fold: int = 0  # which fold's test split this manifest holds (fold K-1 is the plain split)

    def __post_init__(self) -> None:
        nd.check_threshold(self.near_duplicate_threshold)
        if (
            len(self.fractions) != 3
            or any(f < 0 for f in self.fractions)
            or abs(sum(self.fractions) - 1) > 1e-6
        ):
            raise DataError(
                f"split fractions {self.fractions} must be three non-negative numbers summing to 1",
                hint="for example 0.8 0.1 0.1",
            )
        if not 0 <= self.blend < self.fractions[0]:
            raise DataError(
                f"blend fraction {self.blend} must be at least 0 and below the train fraction {self.fractions[0]}",
                hint="for example --blend 0.1 (taken out of train: 0.7 train, 0.1 blend, 0.1 val, 0.1 test)",
            )
        check_folds(self.folds, self.fold, self.fractions[2])


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    split: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    root: Path
    rows: tuple[ManifestRow, ...]
    classes: tuple[str, ...] = CLASSES
    path: Path | None = None

    def split(self, name: str) -> tuple[ManifestRow, ...]:
        if name not in ALL_SPLITS:
            raise DataError(f"unknown split {name!r}", hint=f"use one of {', '.join(ALL_SPLITS)}")
        return tuple(r for r in self.rows if r.split == name)

    def splits(self) -> tuple[str, ...]:
        """train, val, test, and blend where the manifest has one (in pipeline order)."""
        has_blend = any(r.split == BLEND for r in self.rows)
        return tuple(s for s in ALL_SPLITS if s != BLEND or has_blend)

    def abspath(self, row: ManifestRow) -> Path:
        return self.root / row.path

    def counts(self) -> dict[str, dict[str, int]]:
        table = {s: {c: 0 for c in self.classes} for s in self.splits()}
        for r in self.rows:
            table[r.split][r.label] += 1
        return table

    def missing_classes(self) -> dict[str, list[str]]:
        """Per split, the classes that have no image there."""
        return {s: [c for c, n in cnt.items() if n == 0] for s, cnt in self.counts().items()}

    def digest(self) -> str:
        """A short content hash of the manifest: prediction files record it to prove they match."""
        import hashlib

        h = hashlib.sha256()
        for r in self.rows:
            h.update(f"{r.path}\t{r.label}\t{r.split}\t{r.sha256}\n".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class ManifestResult:
    manifest: Manifest
    csv_path: Path
    duplicates: tuple[tuple[str, str], ...]  # (dropped copy, kept original)
    conflicts: tuple[tuple[str, str, str], ...]  # (path, class, sha256) excluded: same pixels in 2+ classes
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (path, reason)
    warnings: tuple[str, ...] = field(default=())
    near_duplicate_groups: tuple[tuple[str, ...], ...] = field(default=())  # kept, each in one split


def check_folds(folds: int, fold: int, test_fraction: float) -> None:
    """Refuse a fold setting that cannot be cut (``folds`` 0 means no cross-validation)."""
    if folds == 0:
        if fold != 0:
            raise DataError(f"fold {fold} was given without folds", hint="pass --folds K with --fold I")
        return
    if folds < 2:
        raise DataError(
            f"folds must be 2 or more (or 0 for no folds), got {folds}", hint="for example --folds 5"
        )
    if not 0 <= fold < folds:
        raise DataError(f"fold {fold} is not one of 0..{folds - 1}", hint=f"pass --fold 0 to {folds - 1}")
    if abs(test_fraction - 1.0 / folds) > 1e-6:
        raise DataError(
            f"with {folds} folds the test fraction is 1/{folds}, not {test_fraction}",
            hint="leave --test out when you pass --folds",
        )


def held_out_block(n: int, n_test: int, folds: int, fold: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of a class's shuffled order that are fold ``fold``'s test split.

    The last fold takes the last ``n_test`` (= floor(n / folds)) positions, where the plain split puts test,
    so fold K-1 is the plain split; the others cut ``[0, n - n_test)`` evenly."""
    if n_test == 0:
        return n, n
    if fold == folds - 1:
        return n - n_test, n
    rest = n - n_test
    return fold * rest // (folds - 1), (fold + 1) * rest // (folds - 1)


def _split_at(pos: int, n_train: int, n_val: int, n_blend: int) -> str:
    """The split of the image placed at ``pos`` in a class's shuffled order: train, blend, val, test."""
    if pos < n_train:
        return "train"
    if pos < n_train + n_blend:
        return BLEND
    return "val" if pos < n_train + n_blend + n_val else "test"


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split for a class of ``n``: val and test get floor(n * f); train keeps the rest."""
    n_val = int(np.floor(n * fractions[1] + 1e-9))
    n_test = int(np.floor(n * fractions[2] + 1e-9))
    return n - n_val - n_test, n_val, n_test


def build_manifest(cfg: SplitConfig, progress: Callable[[int, int], None] | None = None) -> ManifestResult:
    """Scan, hash, deduplicate, group near-duplicates, split and write the manifest.

    A near-duplicate group is split as one unit under its first path's class; a group whose labels differ
    is kept, in one split, with a warning (a perceptual match is evidence of a label error, not proof).
    """
    threshold = cfg.near_duplicate_threshold
    if threshold is not None:
        nd.require_imagehash()  # fail before the scan, not after it
    scan = scan_dataset(cfg.data_dir, cfg.classes)
    hashed, phashes, unreadable = _hash_images(scan, threshold, progress)
    skipped = [(str(p), why) for p, why in scan.skipped] + unreadable
    keep, duplicates, conflicts = _deduplicate(hashed, cfg.classes)
    kept = sorted(rel for items in keep.values() for rel, _ in items)
    groups = () if threshold is None else nd.group_paths(kept, [phashes[r] for r in kept], threshold)
    rows = _assign_splits(_units(keep, groups, cfg.classes), cfg)
    if not rows:
        raise DataError(f"no readable image left in {scan.root}", hint="check the files", path=scan.root)
    rows.sort(key=lambda r: (ALL_SPLITS.index(r.split), cfg.classes.index(r.label), r.path))
    manifest = Manifest(scan.root.resolve(), tuple(rows), cfg.classes, Path(cfg.out))
    warnings = [
        f"split '{s}' has no image of class '{c}'" for s, cs in manifest.missing_classes().items() for c in cs
    ]
    warnings.extend(_mixed_group_warnings(manifest, groups))
    for w in warnings:
        log.debug(w)
    result = ManifestResult(
        manifest, Path(cfg.out), tuple(duplicates), tuple(conflicts), tuple(skipped), tuple(warnings), groups
    )
    write_manifest(result, cfg)
    return result


def _hash_images(
    scan: DatasetScan, threshold: int | None, progress: Callable[[int, int], None] | None
) -> tuple[list[tuple[str, str, str]], dict[str, np.ndarray], list[tuple[str, str]]]:
    """(relpath, class, pixel sha) per image, perceptual hashes (with a threshold), unreadable (path, why)."""
    hashed: list[tuple[str, str, str]] = []
    phashes: dict[str, np.ndarray] = {}
    unreadable: list[tuple[str, str]] = []
    total = len(scan.records)
    for i, rec in enumerate(scan.records):
        rel = rec.path.relative_to(scan.root).as_posix()
        try:
            sha = pixel_hash(rec.path)
            if threshold is not None:
                phashes[rel] = nd.hash_file(rec.path)
            hashed.append((rel, rec.label, sha))
        except DecodeError as e:
            unreadable.append((str(rec.path), e.message))
            log.debug("skipping %s", e.message)
        if progress is not None:
            progress(i + 1, total)
    return hashed, phashes, unreadable


def _deduplicate(
    hashed: list[tuple[str, str, str]], classes: tuple[str, ...]
) -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Kept (relpath, sha) per class, (dropped copy, original) pairs, and cross-class label conflicts."""
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rel, label, sha in hashed:
        by_hash[sha].append((rel, label))
    duplicates: list[tuple[str, str]] = []
    conflicts: list[tuple[str, str, str]] = []
    keep: dict[str, list[tuple[str, str]]] = {c: [] for c in classes}
    for sha, group in sorted(by_hash.items()):
        labels = {label for _, label in group}
        if len(labels) > 1:
            conflicts.extend((rel, label, sha) for rel, label in sorted(group))
            continue
        group = sorted(group)
        keep[group[0][1]].append((group[0][0], sha))
        duplicates.extend((rel, group[0][0]) for rel, _ in group[1:])
    return keep, duplicates, conflicts


def _assign_splits(by_class: dict[str, list[Unit]], cfg: SplitConfig) -> list[ManifestRow]:
    """The rows of every unit, each class's units shuffled (seeded per class) and cut at the split sizes."""
    rows: list[ManifestRow] = []
    for ci, c in enumerate(cfg.classes):
        units = by_class[c]
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, ci]))
        order = rng.permutation(len(units))
        n_total = sum(len(u) for u in units)
        n_train, n_val, n_test = split_sizes(n_total, cfg.fractions)
        shift = n_total  # plain split: positions as they are; a fold rotates its test block to the end
        if cfg.folds:
            lo, shift = held_out_block(n_total, n_test, cfg.folds, cfg.fold)
            n_train = n_total - n_val - (shift - lo)
        n_blend = min(int(np.floor(n_total * cfg.blend + 1e-9)), max(n_train - 1, 0))
        n_train -= n_blend  # train keeps at least one image of the class
        pos = 0  # images placed before this unit: the unit goes where its first image would go
        for idx in order:
            split = _split_at((pos - shift) % max(n_total, 1), n_train, n_val, n_blend)
            rows.extend(ManifestRow(rel, label, split, sha) for rel, label, sha in units[int(idx)])
            pos += len(units[int(idx)])
    return rows


def _units(
    keep: dict[str, list[tuple[str, str]]], groups: tuple[tuple[str, ...], ...], classes: tuple[str, ...]
) -> dict[str, list[Unit]]:
    """Per class, the units to split sorted by first path: a near-duplicate group or a lone image."""
    label_sha = {rel: (c, sha) for c, items in keep.items() for rel, sha in items}
    units: dict[str, list[Unit]] = {c: [] for c in classes}
    for g in groups:
        units[label_sha[g[0]][0]].append([(rel, *label_sha[rel]) for rel in g])
    grouped = {rel for g in groups for rel in g}
    for c, items in keep.items():
        units[c].extend([(rel, c, sha)] for rel, sha in items if rel not in grouped)
    return {c: sorted(u) for c, u in units.items()}


def _mixed_group_warnings(manifest: Manifest, groups: tuple[tuple[str, ...], ...]) -> list[str]:
    row = {r.path: r for r in manifest.rows}
    out = []
    for g in groups:
        labels = sorted({row[p].label for p in g}, key=manifest.classes.index)
        if len(labels) > 1:
            out.append(
                f"near-duplicate group of {len(g)} images spans classes {', '.join(labels)}: kept together "
                f"in split '{row[g[0]].split}'; check their labels ({', '.join(g)})"
            )
    return out


def write_manifest(result: ManifestResult, cfg: SplitConfig) -> None:
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = result.manifest
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in m.rows:
            w.writerow((r.path, r.label, r.split, r.sha256))
    meta = {
        "root": str(m.root),
        "seed": cfg.seed,
        "fractions": list(cfg.fractions),
        "blend": cfg.blend,
        "folds": cfg.folds,
        "fold": cfg.fold,
        "classes": list(m.classes),
        "counts": m.counts(),
        "digest": m.digest(),
        "duplicates": [list(d) for d in result.duplicates],
        "label_conflicts": [list(c) for c in result.conflicts],
        "skipped": [list(s) for s in result.skipped],
        "warnings": list(result.warnings),
        "near_duplicate_hash": None if cfg.near_duplicate_threshold is None else nd.HASH_NAME,
        "near_duplicate_threshold": cfg.near_duplicate_threshold,
        "near_duplicate_groups": [list(g) for g in result.near_duplicate_groups],
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_manifest(path: Path, *, check_files: bool = True, root: Path | None = None) -> Manifest:
    """Read a manifest written by ``build_manifest``; refuse one that no longer matches the files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist", hint="create it with `cxr data split DATA_DIR`", path=path
        )
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    classes = tuple(meta.get("classes", CLASSES))
    base = Path(root) if root is not None else Path(meta.get("root", path.parent))
    rows: list[ManifestRow] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise DataError(
                f"{path} is not a cxr manifest (header {header}, expected {list(COLUMNS)})",
                hint="create it with `cxr data split DATA_DIR`",
                path=path,
            )
        for lineno, rec in enumerate(reader, start=2):
            if len(rec) != 4 or rec[1] not in classes or rec[2] not in ALL_SPLITS:
                raise DataError(
                    f"{path}:{lineno}: malformed row {rec}", hint="re-create the manifest", path=path
                )
            rows.append(ManifestRow(rec[0], rec[1], rec[2], rec[3]))
    if not rows:
        raise DataError(
            f"manifest {path} lists no images", hint="re-create it with `cxr data split`", path=path
        )
    manifest = Manifest(base, tuple(rows), classes, path)
    if check_files:
        missing = [r.path for r in rows if not (base / r.path).is_file()]
        if missing:
            raise DataError(
                f"manifest {path} no longer matches the files under {base}: {len(missing)} of {len(rows)} "
                f"listed images are missing (first: {', '.join(missing[:3])})",
                hint="re-run `cxr data split` on the current data set (this changes the split), or restore "
                "the files",
                path=path,
            )
    return manifest


def format_counts(manifest: Manifest) -> str:
    """A plain-text table of class counts per split (rows: classes, columns: splits and total)."""
    counts = manifest.counts()
    width = max(len(c) for c in manifest.classes) + 2
    splits = manifest.splits()
    lines = [f"{'class':<{width}}" + "".join(f"{s:>8}" for s in splits) + f"{'total':>8}"]
    for c in manifest.classes:
        vals = [counts[s][c] for s in splits]
        lines.append(f"{c:<{width}}" + "".join(f"{v:>8}" for v in vals) + f"{sum(vals):>8}")
    totals = [sum(counts[s].values()) for s in splits]
    lines.append(f"{'total':<{width}}" + "".join(f"{v:>8}" for v in totals) + f"{sum(totals):>8}")
    return "\n".join(lines)
