"""Result files of a folder scan (CSV or JSONL), one row per input file, flushed per batch, resumable."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from cxr.errors import ConfigError, DataError
from cxr.spec import RESULT_FIELDS, Prediction

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


def csv_columns(classes: Sequence[str], members: Sequence[str] = ()) -> list[str]:
    """The CSV header: ``RESULT_FIELDS`` with the probability maps flattened per class (and member)."""
    columns: list[str] = []
    for name in RESULT_FIELDS:
        if name == "probabilities":
            columns += [f"probabilities.{c}" for c in classes]
        elif name == "member_probabilities":
            columns += [f"member_probabilities.{m}.{c}" for m in members for c in classes]
        else:
            columns.append(name)
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return " ".join(str(value).split())


def csv_row(pred: Prediction, classes: Sequence[str], members: Sequence[str] = ()) -> list[str]:
    """``pred`` as one CSV row under ``csv_columns(classes, members)``."""
    record = pred.to_dict()
    member_probs = record["member_probabilities"] or {}
    row: list[str] = []
    for name in RESULT_FIELDS:
        value = record[name]
        if name == "probabilities":
            row += [_cell(value.get(c)) for c in classes]
        elif name == "member_probabilities":
            row += [_cell(member_probs.get(m, {}).get(c)) for m in members for c in classes]
        elif name == "above_operating_point":
            flags = pred.above_operating_point or {}
            row.append(";".join(c for c, above in flags.items() if above))
        elif name == "reasons":
            row.append(";".join(r.code for r in pred.reasons))
        elif name == "warnings":
            row.append(";".join(pred.warnings))
        elif name == "seconds":
            row.append(f"{pred.seconds:.6f}")
        else:
            row.append(_cell(value))
    return row


@dataclass(frozen=True)
class ResultLayout:
    """What shapes a result file and identifies its model: classes, members (CSV columns) and model id."""

    classes: tuple[str, ...]
    model_id: str
    members: tuple[str, ...] = ()


class ResultWriter:
    """Write prediction rows to a text stream in one format, flushing after every batch."""

    def __init__(self, stream: TextIO, fmt: ResultFormat, layout: ResultLayout, *, header: bool) -> None:
        self.stream = stream
        self.fmt = fmt
        self.layout = layout
        self.rows = 0
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if header and self._csv is not None:
            self._csv.writerow(csv_columns(layout.classes, layout.members))
            stream.flush()

    def write(self, preds: Sequence[Prediction]) -> None:
        for p in preds:
            if self._csv is not None:
                self._csv.writerow(csv_row(p, self.layout.classes, self.layout.members))
            else:
                self.stream.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            self.rows += 1
        self.stream.flush()


@dataclass(frozen=True)
class PreviousResults:
    """What an existing result file already holds (for ``--resume``): the paths done and the failures."""

    paths: frozenset[str] = frozenset()
    rows: int = 0
    failed: int = 0
    retried: int = 0  # error rows dropped so that their files run again (``retry_failed``)


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


def _records(path: Path, fmt: ResultFormat, layout: ResultLayout) -> list[tuple[str, dict[str, Any]]]:
    """Each row of ``path`` as (its text line, its source/error/model_id); refuse another model's file."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if fmt == "csv":
        if not lines:
            return []
        header = next(csv.reader(lines[:1]))
        if header != csv_columns(layout.classes, layout.members):
            raise _refuse(path, f"its columns {header} are not those of this model's results")
        i_src, i_err, i_model = header.index("source"), header.index("error"), header.index("model_id")
        rows = [(line, next(csv.reader([line]), [])) for line in lines[1:]]
        return [
            (line, {"source": r[i_src], "error": r[i_err], "model_id": r[i_model]}) for line, r in rows if r
        ]
    return [(line, json.loads(line)) for line in lines if line.strip()]


def read_previous(
    path: Path, fmt: ResultFormat, layout: ResultLayout, *, retry_failed: bool = False
) -> PreviousResults:
    """The sources already in ``path`` (``retry_failed``: error rows removed); refuses another model's file."""
    _cut_partial_last_line(path)
    try:
        records = _records(path, fmt, layout)
        for _, rec in records:
            if rec.get("model_id") != layout.model_id:
                raise _refuse(
                    path, f"it was written by model {rec.get('model_id')!r}, this is {layout.model_id!r}"
                )
        done = [(line, rec) for line, rec in records if not (retry_failed and rec.get("error"))]
        sources = frozenset(str(rec["source"]) for _, rec in done)
    except (json.JSONDecodeError, KeyError, IndexError, AttributeError, ValueError, csv.Error) as e:
        raise _refuse(path, f"it is not a cxr result file ({type(e).__name__}: {e})") from e
    retried = len(records) - len(done)
    if retried:
        head = path.read_text(encoding="utf-8").splitlines(keepends=True)[:1] if fmt == "csv" else []
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join([*head, *(line for line, _ in done)]), encoding="utf-8")
        os.replace(tmp, path)
    failed = sum(bool(rec.get("error")) for _, rec in done)
    return PreviousResults(sources, len(done), failed, retried)


def previous_results(
    path: Path, layout: ResultLayout, *, resume: bool, overwrite: bool, retry_failed: bool = False
) -> PreviousResults:
    """What ``path`` already holds on ``resume``; refuses an existing file unless ``resume`` or ``overwrite``."""
    fmt = result_format(path)
    if not (path.is_file() and path.stat().st_size > 0):
        return PreviousResults()
    if not (resume or overwrite):
        raise ConfigError(
            f"output {path} already exists",
            hint="pass --resume to skip the files already in it, --overwrite to replace it, or another --output",
        )
    return read_previous(path, fmt, layout, retry_failed=retry_failed) if resume else PreviousResults()


def open_results(
    path: Path, layout: ResultLayout, *, resume: bool, overwrite: bool, retry_failed: bool = False
) -> tuple[ResultWriter, PreviousResults]:
    """Open ``path`` for writing (new, overwritten, or appended to on resume) and say what it already holds."""
    fmt = result_format(path)
    append = resume and path.is_file() and path.stat().st_size > 0
    previous = previous_results(path, layout, resume=resume, overwrite=overwrite, retry_failed=retry_failed)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = path.open("a" if append else "w", newline="", encoding="utf-8")
    header = not append or (fmt == "csv" and path.stat().st_size == 0)
    return ResultWriter(stream, fmt, layout, header=header), previous


def open_scan_output(
    output: Path | None,
    stream: TextIO | None,
    stream_format: ResultFormat,
    layout: ResultLayout,
    *,
    resume: bool,
    overwrite: bool,
    retry_failed: bool = False,
) -> tuple[ResultWriter, PreviousResults]:
    """A scan's writer: on ``output`` (see ``open_results``), else on ``stream`` with a header."""
    if output is not None:
        return open_results(output, layout, resume=resume, overwrite=overwrite, retry_failed=retry_failed)
    if stream is not None:
        writer = ResultWriter(stream, stream_format, layout, header=True)
        return writer, PreviousResults()
    raise DataError("scan needs an output file or a stream to write rows to")
