"""Every method's prediction per test image: ``eval/predictions_<split>.csv``, written by `cxr evaluate`.

Takes: the split's image paths and labels and each method's predicted labels. Makes: one CSV row per image
(``path``, ``label``, then one column per method key holding the predicted class), and reads it back for
`cxr evaluate-folds`, which pools the test splits of cross-validation folds.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import DataError

FIXED = ("path", "label")


def table_path(eval_dir: Path, split: str) -> Path:
    return Path(eval_dir) / f"predictions_{split}.csv"


@dataclass(frozen=True)
class MethodPredictions:
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [N], indices into ``classes``
    predictions: dict[str, np.ndarray]  # method key -> int64 [N]
    classes: tuple[str, ...]


def write_table(
    path: Path,
    paths: Sequence[str],
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    classes: Sequence[str],
) -> Path:
    """Write the table (class names, not indices, so a reader needs no other file)."""
    keys = list(predictions)
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*FIXED, *keys])
        for i, p in enumerate(paths):
            w.writerow([p, classes[int(labels[i])], *(classes[int(predictions[k][i])] for k in keys)])
    return Path(path)


def read_table(path: Path, classes: Sequence[str]) -> MethodPredictions:
    """Read a table written by ``write_table``; a missing file or an unknown class is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"no prediction table at {path}",
            hint="run `cxr evaluate RUN_DIR` (cxr 0.1 writes eval/predictions_test.csv) and try again",
            path=path,
        )
    index = {c: i for i, c in enumerate(classes)}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][:2]) != FIXED:
        raise DataError(f"{path} is not a cxr prediction table (header {rows[0] if rows else []})", path=path)
    keys = rows[0][2:]
    try:
        coded = np.array([[index[v] for v in r[1:]] for r in rows[1:]], dtype=np.int64).reshape(
            -1, len(keys) + 1
        )
    except KeyError as e:
        raise DataError(
            f"{path} names class {e.args[0]!r}, not one of {', '.join(classes)}", path=path
        ) from e
    return MethodPredictions(
        paths=tuple(r[0] for r in rows[1:]),
        labels=coded[:, 0],
        predictions={k: coded[:, j + 1] for j, k in enumerate(keys)},
        classes=tuple(classes),
    )
