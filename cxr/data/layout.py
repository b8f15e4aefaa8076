"""Find the images of a COVID-19 Radiography Database folder in either Kaggle layout: v4
``<root>/<Class>/images/*.png`` or flat ``<root>/<Class>/*.png`` (``<root>`` may be its parent folder).
Makes ``DatasetScan``; non-image files are listed as skipped with the reason."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxr.errors import DataError
from cxr.imaging.decode import READABLE_SUFFIXES
from cxr.labels import CLASSES

KAGGLE_FOLDER = "COVID-19_Radiography_Dataset"
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str


@dataclass(frozen=True)
class DatasetScan:
    root: Path
    layout: Literal["kaggle_v4", "flat"]
    records: tuple[ImageRecord, ...]
    skipped: tuple[tuple[Path, str], ...] = field(default=())


def resolve_root(path: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    """Accept the dataset folder itself or its parent (the unzipped Kaggle download)."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data set folder {path} does not exist",
            hint="pass the unzipped COVID-19_Radiography_Dataset folder, or make synthetic data with "
            "`cxr data synth --output DIR`",
            path=path,
        )
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a data set folder", path=path)
    if not any((path / c).is_dir() for c in classes) and (path / KAGGLE_FOLDER).is_dir():
        return path / KAGGLE_FOLDER
    return path


def _check_class_folders(root: Path, classes: tuple[str, ...]) -> None:
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing = [c for c in classes if not (root / c).is_dir()]
    if not missing:
        return
    lines = []
    for c in missing:
        near = difflib.get_close_matches(c, present, n=1, cutoff=0.6)
        lines.append(f"'{c}'" + (f" (found '{near[0]}': rename it to '{c}')" if near else ""))
    raise DataError(
        f"{root} lacks the class folder(s) {', '.join(lines)}; found folders: {present or 'none'}",
        hint=f"the data set needs one folder per class: {', '.join(repr(c) for c in classes)}",
        path=root,
    )


def scan_dataset(path: Path, classes: tuple[str, ...] = CLASSES) -> DatasetScan:
    """List every image of the data set at ``path`` with its class, in sorted path order."""
    root = resolve_root(Path(path), classes)
    _check_class_folders(root, classes)
    v4 = all((root / c / "images").is_dir() for c in classes)
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for c in classes:
        folder = root / c / "images" if v4 else root / c
        for p in sorted(folder.iterdir()):
            if p.is_dir() or p.name in IGNORED_NAMES:
                continue
            if p.suffix.lower() in READABLE_SUFFIXES:
                records.append(ImageRecord(p, c))
            else:
                skipped.append((p, f"not an image file (suffix {p.suffix or 'none'!r})"))
    if not records:
        raise DataError(
            f"no images found under {root} (looked in {'<Class>/images/' if v4 else '<Class>/'})",
            hint="check that the download finished unzipping, or make synthetic data with `cxr data synth --output DIR`",
            path=root,
        )
    return DatasetScan(root, "kaggle_v4" if v4 else "flat", tuple(records), tuple(skipped))
