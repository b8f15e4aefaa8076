"""Takes a cxr-bench report and real images; makes the report with each reduced-precision row's top-1
agreement with FP32 (the ``agree %`` column of the published tables).

Reduced precision = any ``inference``/``end_to_end`` row whose precision is not fp32 (OpenVINO bf16, INT8
files). The reference is the FP32 file among the model files, on onnxruntime's CPU provider. Each (file,
provider, precision asked) is checked once, with a session opened like its first row's; at most ``n``
images, spread evenly over the sorted folder (a sorted folder is grouped by class: take from each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench.config import BenchConfig
from cxr.bench.inputs import ModelFile, list_images
from cxr.bench.measure import open_predictor
from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import CxrError
from cxr.imaging.decode import decode_gray
from cxr.runtime.predictor import Predictor

CHECKED_KINDS = ("inference", "end_to_end")


def spread(files: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``files``, evenly spaced."""
    if len(files) <= n:
        return list(files)
    return [files[i * len(files) // n] for i in range(n)]


def load_images(folder: Path, n: int, notes: list[str]) -> tuple[np.ndarray, ...]:
    """At most ``n`` decoded images of ``folder``; an unreadable file is left out with a note."""
    grays: list[np.ndarray] = []
    for path in spread(list_images(folder), n):
        try:
            grays.append(decode_gray(path))
        except CxrError as e:
            notes.append(f"agreement: skipped {path.name}: {e.message}")
    return tuple(grays)


def top1(predictor: Predictor, grays: Sequence[np.ndarray], fixed_batch: int | None = None) -> np.ndarray:
    """The top-1 class of every image (batches of 8, or the graph's fixed batch, padded at the end)."""
    step = fixed_batch or 8
    out: list[np.ndarray] = []
    for start in range(0, len(grays), step):
        chunk = list(grays[start : start + step])
        n = len(chunk)
        if fixed_batch is not None:
            chunk += [chunk[-1]] * (step - n)
        probs = predictor.run(predictor.prepare(chunk)).probabilities[:n]
        out.append(np.argmax(probs, axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def add_agreement(
    report: BenchReport, cfg: BenchConfig, files: Sequence[ModelFile], grays: Sequence[np.ndarray]
) -> BenchReport:
    """``report`` with ``agreement`` on each reduced-precision row of ``files`` (a note without FP32); the
    reference rows keep the agreement they measured themselves."""
    fp32 = next((mf for mf in files if mf.precision == "fp32"), None)
    if fp32 is None:
        note = "top-1 agreement not measured: none of the model files is FP32 (the reference)"
        return dataclasses.replace(report, notes=(*report.notes, note))
    by_name = {mf.name: mf for mf in files}
    reference: np.ndarray | None = None
    done: dict[tuple[str, str, str], dict[str, Any]] = {}

    def agreement(row: BenchRow) -> Mapping[str, Any] | None:
        nonlocal reference
        mf = by_name.get(row.model)
        if row.kind not in CHECKED_KINDS:
            return row.agreement  # a reference row's own check (PyTorch best, the peers) stays
        if row.precision == "fp32" or mf is None:
            return None
        key = (row.model, row.provider_requested, row.precision_requested)
        if key not in done:
            if reference is None:
                ref, _ = open_predictor(fp32.path, cfg.session_for("cpu", "auto", None))
                reference = top1(ref, grays, fp32.fixed_batch)
            session = cfg.session_for(row.provider_requested, row.precision_requested, row.threads)
            labels = top1(open_predictor(mf.path, session)[0], grays, mf.fixed_batch)
            done[key] = {
                "top1": float(np.mean(labels == reference)),
                "images": int(labels.size),
                "reference": f"{fp32.name} fp32 on onnxruntime cpu",
            }
        return done[key]

    rows = tuple(dataclasses.replace(r, agreement=agreement(r)) for r in report.rows)
    return dataclasses.replace(report, rows=rows)
