"""The split manifest: which image is in train, val or test, decided once and reused by every stage.

Takes: a data set folder (``SplitConfig``). Makes: ``manifest.csv`` (path relative to the data root, class,
split, sha256 of the decoded pixels) and ``manifest.json`` beside it (root, seed, fractions, counts,
duplicates, label conflicts, skipped files). Exact duplicates (same pixels) are found by hash before
splitting: within a class one copy is kept, across classes all copies are excluded as label conflicts.
The split is stratified per class and seeded; the same inputs and seed give the same manifest.
A rare class fills train first, then val, then test.
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

from cxr.data.layout import scan_dataset
from cxr.errors import DataError, DecodeError
from cxr.imaging.decode import pixel_hash
from cxr.labels import CLASSES

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
COLUMNS = ("path", "class", "split", "sha256")


@dataclass(frozen=True)
class SplitConfig:
    data_dir: Path
    out: Path
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    classes: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        if (
            len(self.fractions) != 3
            or any(f < 0 for f in self.fractions)
            or abs(sum(self.fractions) - 1) > 1e-6
        ):
            raise DataError(
                f"split fractions {self.fractions} must be three non-negative numbers summing to 1",
                hint="for example 0.8 0.1 0.1",
            )


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
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}", hint=f"use one of {', '.join(SPLITS)}")
        return tuple(r for r in self.rows if r.split == name)

    def abspath(self, row: ManifestRow) -> Path:
        return self.root / row.path

    def counts(self) -> dict[str, dict[str, int]]:
        table = {s: {c: 0 for c in self.classes} for s in SPLITS}
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


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split for a class of ``n``: val and test get floor(n * f); train keeps the rest."""
    n_val = int(np.floor(n * fractions[1] + 1e-9))
    n_test = int(np.floor(n * fractions[2] + 1e-9))
    return n - n_val - n_test, n_val, n_test


def build_manifest(cfg: SplitConfig, progress: Callable[[int, int], None] | None = None) -> ManifestResult:
    """Scan, hash, deduplicate, split and write the manifest (see the module docstring)."""
    scan = scan_dataset(cfg.data_dir, cfg.classes)
    skipped = [(str(p), why) for p, why in scan.skipped]
    hashed: list[tuple[str, str, str]] = []  # (relpath, class, sha)
    total = len(scan.records)
    for i, rec in enumerate(scan.records):
        rel = rec.path.relative_to(scan.root).as_posix()
        try:
            hashed.append((rel, rec.label, pixel_hash(rec.path)))
        except DecodeError as e:
            skipped.append((str(rec.path), e.message))
            log.debug("skipping %s", e.message)
        if progress is not None:
            progress(i + 1, total)
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rel, label, sha in hashed:
        by_hash[sha].append((rel, label))
    duplicates: list[tuple[str, str]] = []
    conflicts: list[tuple[str, str, str]] = []
    keep: dict[str, list[tuple[str, str]]] = {c: [] for c in cfg.classes}
    for sha, group in sorted(by_hash.items()):
        labels = {label for _, label in group}
        if len(labels) > 1:
            conflicts.extend((rel, label, sha) for rel, label in sorted(group))
            continue
        group = sorted(group)
        keep[group[0][1]].append((group[0][0], sha))
        duplicates.extend((rel, group[0][0]) for rel, _ in group[1:])
    rows: list[ManifestRow] = []
    for ci, c in enumerate(cfg.classes):
        items = sorted(keep[c])
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, ci]))
        order = rng.permutation(len(items))
        n_train, n_val, _ = split_sizes(len(items), cfg.fractions)
        for rank, idx in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            rel, sha = items[int(idx)]
            rows.append(ManifestRow(rel, c, split, sha))
    if not rows:
        raise DataError(f"no readable image left in {scan.root}", hint="check the files", path=scan.root)
    rows.sort(key=lambda r: (SPLITS.index(r.split), cfg.classes.index(r.label), r.path))
    manifest = Manifest(scan.root.resolve(), tuple(rows), cfg.classes, Path(cfg.out))
    warnings = [
        f"split '{s}' has no image of class '{c}'" for s, cs in manifest.missing_classes().items() for c in cs
    ]
    for w in warnings:
        log.debug(w)
    result = ManifestResult(
        manifest, Path(cfg.out), tuple(duplicates), tuple(conflicts), tuple(skipped), tuple(warnings)
    )
    write_manifest(result, cfg)
    return result


def _meta_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".json")


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
        "classes": list(m.classes),
        "counts": m.counts(),
        "digest": m.digest(),
        "duplicates": [list(d) for d in result.duplicates],
        "label_conflicts": [list(c) for c in result.conflicts],
        "skipped": [list(s) for s in result.skipped],
        "warnings": list(result.warnings),
    }
    _meta_path(out).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_manifest(path: Path, *, check_files: bool = True, root: Path | None = None) -> Manifest:
    """Read a manifest written by ``build_manifest``; refuse one that no longer matches the files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist", hint="create it with `cxr data split DATA_DIR`", path=path
        )
    meta_file = _meta_path(path)
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
            if len(rec) != 4 or rec[1] not in classes or rec[2] not in SPLITS:
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
    lines = [f"{'class':<{width}}" + "".join(f"{s:>8}" for s in SPLITS) + f"{'total':>8}"]
    for c in manifest.classes:
        vals = [counts[s][c] for s in SPLITS]
        lines.append(f"{c:<{width}}" + "".join(f"{v:>8}" for v in vals) + f"{sum(vals):>8}")
    totals = [sum(counts[s].values()) for s in SPLITS]
    lines.append(f"{'total':<{width}}" + "".join(f"{v:>8}" for v in totals) + f"{sum(totals):>8}")
    return "\n".join(lines)
