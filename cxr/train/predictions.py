"""Prediction files (numpy only): ``<split>.csv`` (``path, label, p:<class>...``) and a ``.json`` beside it
(member, split, manifest digest, class order, checkpoint hash), so that mismatched files are refused."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cxr.errors import DataError


@dataclass(frozen=True)
class PredictionTable:
    member: str
    split: str
    manifest_digest: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    probs: np.ndarray  # float64 [N, K], rows in ``paths`` order
    checkpoint_sha256: str = ""
    precision: str = "fp32"  # the arithmetic the probabilities were computed in ("" : unknown, older files)
    via: tuple[int, int] | None = None  # images resized to this (the ensemble's input size) first

    def label_indices(self) -> np.ndarray:
        return np.array([self.classes.index(lab) for lab in self.labels], dtype=np.int64)


def write_predictions(table: PredictionTable, directory: Path) -> Path:
    """Write ``<directory>/<split>.csv`` and its ``.json`` sidecar; return the CSV path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, k = table.probs.shape
    if n != len(table.paths) or n != len(table.labels) or k != len(table.classes):
        raise DataError(
            f"prediction table for {table.member}/{table.split} is inconsistent: probs {table.probs.shape}, "
            f"{len(table.paths)} paths, {len(table.labels)} labels, {len(table.classes)} classes"
        )
    out = directory / f"{table.split}.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *[f"p:{c}" for c in table.classes]])
        for p, lab, row in zip(table.paths, table.labels, table.probs, strict=True):
            w.writerow([p, lab, *[repr(float(v)) for v in row]])
    meta = {
        f.name: getattr(table, f.name) for f in fields(table) if f.name not in ("paths", "labels", "probs")
    }
    meta["n"] = n
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def read_predictions(csv_path: Path) -> PredictionTable:
    """Read a file written by ``write_predictions``; a malformed or inconsistent file is refused."""
    csv_path = Path(csv_path)
    meta_path = csv_path.with_suffix(".json")
    if not csv_path.is_file() or not meta_path.is_file():
        raise DataError(
            f"prediction file {csv_path} (or its .json) is missing",
            hint="train the member first (`cxr train base`), which writes val and test predictions",
            path=csv_path,
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    classes = tuple(meta["classes"])
    paths: list[str] = []
    labels: list[str] = []
    rows: list[list[float]] = []
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        expected = ["path", "label", *[f"p:{c}" for c in classes]]
        if header != expected:
            raise DataError(f"{csv_path}: header {header} does not match {expected}", path=csv_path)
        for lineno, rec in enumerate(reader, start=2):
            try:
                rows.append([float(v) for v in rec[2:]])
            except ValueError as e:
                raise DataError(f"{csv_path}:{lineno}: not a number ({e})", path=csv_path) from e
            if len(rows[-1]) != len(classes) or rec[1] not in classes:
                raise DataError(f"{csv_path}:{lineno}: malformed row", path=csv_path)
            paths.append(rec[0])
            labels.append(rec[1])
    probs = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes))
    return PredictionTable(
        member=str(meta["member"]),
        split=str(meta["split"]),
        manifest_digest=str(meta["manifest_digest"]),
        classes=classes,
        paths=tuple(paths),
        labels=tuple(labels),
        probs=probs,
        checkpoint_sha256=str(meta.get("checkpoint_sha256", "")),
        precision=str(meta.get("precision", "")),
        via=(int(meta["via"][0]), int(meta["via"][1])) if meta.get("via") else None,
    )


def align_members(tables: Sequence[PredictionTable]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(paths, label indices [N], probabilities [N, M, K]) in the first table's order, after checking that
    the tables hold the same images of the same split, manifest and class order."""
    if not tables:
        raise DataError("no prediction tables given", hint="train the base models first")
    ref = tables[0]
    for t in tables[1:]:
        for what, a, b in (
            ("split", ref.split, t.split),
            ("manifest", ref.manifest_digest, t.manifest_digest),
            ("class order", ref.classes, t.classes),
        ):
            if a != b:
                raise DataError(
                    f"member '{t.member}' has {what} {b!r} but member '{ref.member}' has {a!r}",
                    hint="train every member on the same manifest and predict the same split",
                )
        if set(t.paths) != set(ref.paths):
            raise DataError(
                f"member '{t.member}' predicted other images than '{ref.member}' on split '{ref.split}'",
                hint="re-run predictions for every member on the same manifest",
            )
    stacked = []
    for t in tables:
        index = {p: i for i, p in enumerate(t.paths)}
        stacked.append(t.probs[[index[p] for p in ref.paths]])
    return ref.paths, ref.label_indices(), np.stack(stacked, axis=1)
