"""Result files of a folder scan: one row per input file, written batch by batch, readable for ``--resume``.

Takes: ``Prediction`` objects, the model's classes and id, and an output (a ``.csv`` or ``.jsonl`` path, or
a text stream). Makes: rows with ``path, predicted_class, confidence, p:<class>..., error, provider,
model_id, seconds, above_operating_point, assessable, reasons, notice`` (CSV: the classes at or above their
operating point, the input gate's verdict and its reason codes; JSONL has the reasons' messages too), or the same as JSON objects with nested ``probabilities`` and
``member_probabilities`` (JSONL). Every batch is flushed, so an interrupted scan keeps every finished row;
a half-written last line is cut off before a resumed scan appends. A file written by another model or for
another class list is refused on resume.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from cxr.errors import ConfigError, DataError
from cxr.runtime.types import Prediction

ResultFormat = Literal["csv", "jsonl"]
SUFFIX_FORMATS: dict[str, ResultFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def result_format(path: Path) -> ResultFormat:
    """The format an output path asks for, from its suffix."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"output {path} has suffix {path.suffix or '(none)'!r}; cxr writes .csv or .jsonl",
            hint="use e.g. --output results.csv or --output results.jsonl",
        )
    return fmt


def csv_columns(classes: Sequence[str]) -> list[str]:
    return [
        "path",
        "predicted_class",
        "confidence",
        *[f"p:{c}" for c in classes],
        "error",
        "provider",
        "model_id",
        "seconds",
        "above_operating_point",
        "assessable",
        "reasons",
        "notice",
    ]


def _one_line(text: str | None) -> str:
    return "" if not text else " ".join(text.split())


def csv_row(pred: Prediction, classes: Sequence[str], model_id: str) -> list[str]:
    probs = [repr(float(pred.probabilities[c])) if pred.ok else "" for c in classes]
    return [
        pred.source,
        pred.label or "",
        "" if pred.confidence is None else repr(float(pred.confidence)),
        *probs,
        _one_line(pred.error),
        pred.provider,
        model_id,
        f"{pred.seconds:.6f}",
        flagged_classes(pred),
        "" if pred.assessable is None else str(pred.assessable).lower(),
        ";".join(r.code for r in pred.reasons),
        pred.notice,
    ]


def flagged_classes(pred: Prediction) -> str:
    """The classes at or above their operating point, ``;``-joined ("" for none or no operating points)."""
    flags = pred.above_operating_point or {}
    return ";".join(c for c, above in flags.items() if above)


def json_record(pred: Prediction, model_id: str) -> dict[str, Any]:
    d = pred.to_dict()
    return {
        "path": d.pop("source"),
        "predicted_class": d.pop("label"),
        **d,
        "error": None if pred.error is None else _one_line(pred.error),
        "model_id": model_id,
    }


class ResultWriter:
    """Write prediction rows to a text stream in one format, flushing after every batch."""

    def __init__(
        self, stream: TextIO, fmt: ResultFormat, classes: Sequence[str], model_id: str, *, header: bool
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.classes = tuple(classes)
        self.model_id = model_id
        self.rows = 0
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if header and self._csv is not None:
            self._csv.writerow(csv_columns(self.classes))
            stream.flush()

    def write(self, preds: Sequence[Prediction]) -> None:
        for p in preds:
            if self._csv is not None:
                self._csv.writerow(csv_row(p, self.classes, self.model_id))
            else:
                self.stream.write(json.dumps(json_record(p, self.model_id), ensure_ascii=False) + "\n")
            self.rows += 1
        self.stream.flush()


@dataclass(frozen=True)
class PreviousResults:
    """What an existing result file already holds (for ``--resume``)."""

    paths: frozenset[str]
    rows: int
    failed: int


def _cut_partial_last_line(path: Path) -> None:
    """An interrupted write can leave half a line at the end: drop it so appended rows stay parseable."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _refuse(path: Path, what: str) -> DataError:
    return DataError(
        f"cannot resume into {path}: {what}",
        hint="write to a new --output file, or pass --overwrite to start that file again",
        path=path,
    )


def read_previous(path: Path, fmt: ResultFormat, classes: Sequence[str], model_id: str) -> PreviousResults:
    """Read the paths already in ``path``; refuse a file from another model or class list."""
    _cut_partial_last_line(path)
    paths: set[str] = set()
    rows = failed = 0
    with path.open(newline="", encoding="utf-8") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return PreviousResults(frozenset(), 0, 0)
            if header != csv_columns(classes):
                raise _refuse(
                    path, f"its columns {header} are not those of this model's classes {list(classes)}"
                )
            i_path, i_err, i_model = header.index("path"), header.index("error"), header.index("model_id")
            records = ({"path": r[i_path], "error": r[i_err], "model_id": r[i_model]} for r in reader if r)
        else:
            records = (json.loads(line) for line in f if line.strip())
        try:
            for rec in records:
                if rec.get("model_id") != model_id:
                    raise _refuse(
                        path, f"it was written by model {rec.get('model_id')!r}, this is {model_id!r}"
                    )
                paths.add(str(rec["path"]))
                rows += 1
                failed += bool(rec.get("error"))
        except (json.JSONDecodeError, KeyError, IndexError, AttributeError) as e:
            raise _refuse(path, f"it is not a cxr result file ({type(e).__name__}: {e})") from e
    return PreviousResults(frozenset(paths), rows, failed)


def open_results(
    path: Path, classes: Sequence[str], model_id: str, *, resume: bool, overwrite: bool
) -> tuple[ResultWriter, PreviousResults]:
    """Open ``path`` for writing (new, overwritten, or appended to on resume) and say what it already holds."""
    fmt = result_format(path)
    previous = PreviousResults(frozenset(), 0, 0)
    exists = path.is_file() and path.stat().st_size > 0
    if exists and not (resume or overwrite):
        raise ConfigError(
            f"output {path} already exists",
            hint="pass --resume to skip the files already in it, --overwrite to replace it, or another --output",
        )
    if exists and resume:
        previous = read_previous(path, fmt, classes, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    append = exists and resume
    stream = path.open("a" if append else "w", newline="", encoding="utf-8")
    header = not append or (fmt == "csv" and path.stat().st_size == 0)
    return ResultWriter(stream, fmt, classes, model_id, header=header), previous


def open_scan_output(
    output: Path | None,
    stream: TextIO | None,
    stream_format: ResultFormat,
    classes: Sequence[str],
    model_id: str,
    *,
    resume: bool,
    overwrite: bool,
) -> tuple[ResultWriter, PreviousResults]:
    """A scan's writer: on ``output`` (see ``open_results``), else on ``stream`` with a header."""
    if output is not None:
        return open_results(output, classes, model_id, resume=resume, overwrite=overwrite)
    if stream is not None:
        writer = ResultWriter(stream, stream_format, classes, model_id, header=True)
        return writer, PreviousResults(frozenset(), 0, 0)
    raise DataError("scan needs an output file or a stream to write rows to")


__all__ = [
    "PreviousResults",
    "ResultFormat",
    "ResultWriter",
    "csv_columns",
    "json_record",
    "open_results",
    "open_scan_output",
    "read_previous",
    "result_format",
]
