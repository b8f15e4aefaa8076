"""Takes a ``Predictor`` and a ``ScanConfig``; predicts a folder batch by batch and makes a ``ScanResult``."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cxr.errors import DataError
from cxr.imaging.decode import READABLE_SUFFIXES
from cxr.imaging.dicom import might_be_dicom
from cxr.runtime.predictor import Predictor
from cxr.runtime.results import ResultFormat, open_scan_output
from cxr.spec import Prediction

MAX_FAILURES_KEPT = 20


@dataclass(frozen=True)
class ScanConfig:
    folder: Path
    recursive: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    output: Path | None = None  # None: rows go to the stream given to ``scan_folder``
    stream_format: ResultFormat = "csv"  # the format of rows written to a stream
    resume: bool = False
    overwrite: bool = False
    retry_failed: bool = False  # with resume: predict again the files whose previous row is an error


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    folder: str
    found: int  # files selected in the folder
    skipped: int  # already in the output (--resume)
    predicted: int
    failed: int
    counts: dict[str, int]  # predicted class -> files, this run
    not_assessable_files: int = 0  # predicted files the input gate marked not assessable
    not_assessable: dict[str, int] = field(default_factory=dict)  # reason code -> files with it
    seconds: float
    images_per_second: float  # files processed (predicted or failed) per second of scan
    provider: str
    precision: str | None = None  # what the backend really ran (openvino: fp32/bf16); None: the file's own
    model_id: str
    output: str | None
    failures: tuple[tuple[str, str], ...] = ()  # (path, error), the first few

    @property
    def exit_code(self) -> int:
        """0: every file predicted; 1: some failed."""
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, object]:
        """The fields in order, each failure as ``{"path", "error"}``."""
        return {**dataclasses.asdict(self), "failures": [{"path": p, "error": e} for p, e in self.failures]}


def looks_like_dicom_file(path: Path) -> bool:
    """Cheap sniff for suffix-less files (see ``cxr.imaging.dicom.might_be_dicom``)."""
    try:
        with path.open("rb") as f:
            return might_be_dicom(f.read(132))
    except OSError:
        return False


def _matches(rel: str, name: str, patterns: Sequence[str]) -> bool:
    rel, name = rel.lower(), name.lower()
    return any(fnmatch.fnmatchcase(name, p.lower()) or fnmatch.fnmatchcase(rel, p.lower()) for p in patterns)


def find_images(
    folder: Path, *, recursive: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Path]:
    """The files a scan reads, sorted: image/DICOM suffixes (and suffix-less DICOM) or the ``include`` globs,
    less ``exclude`` and hidden files; a glob matches the name or relative path, case-insensitively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder} is not a folder" if folder.exists() else f"folder {folder} does not exist",
            hint="pass a folder of images; for single files use `cxr-predict image FILE...`",
            path=folder,
        )
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if include:
                selected = _matches(rel, name, include)
            else:
                suffix = path.suffix.lower()
                selected = suffix in READABLE_SUFFIXES or (suffix == "" and looks_like_dicom_file(path))
            if selected and not (exclude and _matches(rel, name, exclude)) and path.is_file():
                found.append(path)
    return found


def _no_images(cfg: ScanConfig) -> DataError:
    hint = "check the folder"
    if not cfg.recursive and any(
        p.is_dir() for p in Path(cfg.folder).iterdir() if not p.name.startswith(".")
    ):
        hint = "it has subfolders: add --recursive"
    if cfg.include or cfg.exclude:
        hint += f" (include {list(cfg.include)}, exclude {list(cfg.exclude)})"
    return DataError(
        f"no images found in {cfg.folder} (looked for {', '.join(sorted(READABLE_SUFFIXES))} and DICOM files)",
        hint=hint,
        path=cfg.folder,
    )


@dataclass
class ScanTally:
    """What a scan found so far: files per class, failures (the first few kept), the input gate's counts."""

    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    not_assessable_files: int = 0
    not_assessable: Counter[str] = field(default_factory=Counter)  # reason code -> files
    providers: Counter[str] = field(default_factory=Counter)

    def add(self, batch: Sequence[Prediction]) -> None:
        for p in batch:
            if p.ok and p.label is not None:
                self.counts[p.label] += 1
                self.providers[p.provider] += 1
                if p.assessable is False:
                    self.not_assessable.update({r.code for r in p.reasons} or {"unknown"})
                    self.not_assessable_files += 1
            else:
                self.failed += 1
                if len(self.failures) < MAX_FAILURES_KEPT:
                    self.failures.append((p.source, p.error or ""))

    @property
    def predicted(self) -> int:
        return sum(self.counts.values())

    def result(self, classes: Sequence[str], seconds: float, **fields: Any) -> ScanResult:
        """The ``ScanResult`` of these counts (per class of ``classes``) with the scan's other ``fields``."""
        done = self.predicted + self.failed
        return ScanResult(
            predicted=self.predicted,
            failed=self.failed,
            counts={c: self.counts.get(c, 0) for c in classes},
            seconds=seconds,
            images_per_second=done / seconds if seconds > 0 else 0.0,
            failures=tuple(self.failures),
            not_assessable_files=self.not_assessable_files,
            not_assessable=dict(self.not_assessable),
            **fields,
        )


def scan_folder(
    predictor: Predictor,
    cfg: ScanConfig,
    *,
    stream: TextIO | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[Sequence[Prediction]], None] | None = None,
) -> ScanResult:
    """Predict every selected file of ``cfg.folder`` into ``cfg.output`` (or ``stream``); hooks for progress."""
    files = find_images(cfg.folder, recursive=cfg.recursive, include=cfg.include, exclude=cfg.exclude)
    if not files:
        raise _no_images(cfg)
    writer, previous = open_scan_output(
        cfg.output,
        stream,
        cfg.stream_format,
        predictor.result_layout,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        retry_failed=cfg.retry_failed,
    )
    done = previous.paths | {os.path.abspath(p) for p in previous.paths}  # as given or absolute
    todo = [p for p in files if str(p) not in done and os.path.abspath(p) not in done]
    if on_start is not None:
        on_start(len(todo), len(files) - len(todo))
    tally = ScanTally()
    t0 = time.perf_counter()
    try:
        for batch in predictor.iter_predict(todo, names=[str(p) for p in todo]):
            writer.write(batch)
            tally.add(batch)
            if on_batch is not None:
                on_batch(batch)
    finally:
        if cfg.output is not None:
            writer.stream.close()
    return tally.result(
        predictor.classes,
        time.perf_counter() - t0,
        folder=str(cfg.folder),
        found=len(files),
        skipped=len(files) - len(todo),
        provider=predictor.provider,
        model_id=predictor.model_id,
        output=None if cfg.output is None else str(cfg.output),
        precision=predictor.info.precision,
    )
