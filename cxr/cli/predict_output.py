"""What `cxr-predict` prints: log lines, the scan progress bar, scan summaries and `image` results."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from cxr.cli.common import warn
from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.cli.predict_setup import Opened
    from cxr.progress import Progress
    from cxr.runtime.predictor import Predictor
    from cxr.runtime.ray.scan import RayScanResult
    from cxr.runtime.scan import ScanResult
    from cxr.spec import Prediction


class _EchoHandler(logging.Handler):
    """Log records as ``warning: ...`` lines on the current stderr (works under CliRunner too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def setup_logging(verbose: bool) -> None:
    """cxr's log records on stderr: warnings and errors, everything with ``verbose``."""
    logger = logging.getLogger("cxr")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


@dataclass
class ScanHooks:
    """Where a scan streams its rows, and the progress bar it drives (created once the work is known)."""

    stream: TextIO
    show_bar: bool
    bar: Progress | None = None

    def on_start(self, todo: int, skipped: int) -> None:
        from cxr.progress import Progress

        stderr = typer.get_text_stream("stderr") if todo > 0 and self.show_bar else None
        self.bar = Progress(todo, "scan", stderr, log_interval=10.0)

    def on_batch(self, preds: Any) -> None:
        if self.bar is not None:
            self.bar.update(len(preds))


@contextmanager
def scan_progress(output: Path | None, silent: bool) -> Iterator[ScanHooks]:
    """Rows go to stdout unless ``output``; no bar when ``silent`` or when the rows fill the terminal."""
    stdout = typer.get_text_stream("stdout")
    hooks = ScanHooks(stdout, show_bar=not silent and not (output is None and stdout.isatty()))
    try:
        yield hooks
    finally:
        if hooks.bar is not None:
            hooks.bar.close()


def summary_text(result: ScanResult, classes: tuple[str, ...], warnings: Sequence[str] = ()) -> str:
    """The human summary of a scan: files per class, failures, speed, provider, model, the notice."""
    width = max(len(c) for c in (*classes, "failed", "total"))
    lines = ["", f"{'class':<{width}}  files"]
    lines += [f"{c:<{width}}  {result.counts.get(c, 0):>5}" for c in classes]
    lines.append(f"{'failed':<{width}}  {result.failed:>5}")
    lines.append(f"{'total':<{width}}  {result.predicted + result.failed:>5}")
    if result.not_assessable_files:
        why = ", ".join(f"{code} {n}" for code, n in sorted(result.not_assessable.items()))
        lines.append(
            f"NOT ASSESSABLE (predicted, review before use): {result.not_assessable_files} files; reasons: {why}"
        )
    if result.skipped:
        lines.append(f"skipped {result.skipped} files already in {result.output} (--resume)")
    lines.append(
        f"{result.images_per_second:.1f} images/s in {result.seconds:.1f} s on provider '{result.provider}'"
        f"{f' ({result.precision})' if result.precision else ''}, "
        f"model {result.model_id}"
    )
    if result.output:
        lines.append(f"results: {result.output}")
    for path, err in result.failures[:5]:
        lines.append(f"failed: {err if err.startswith(path) else f'{path}: {err}'}")
    if result.failed > 5:
        lines.append(f"... and {result.failed - 5} more failures (see the error column)")
    lines += [f"warning: {w}" for w in warnings]  # said before the rows too; repeated beside the totals
    lines.append(NOTICE)
    return "\n".join(lines)


def echo_scan_summary(
    result: ScanResult, model: dict[str, Any], *, output: Path | None, json_out: bool, quiet: bool
) -> None:
    """A local scan's end: JSON with ``--json`` (stdout with --output, else stderr), else the human summary."""
    if json_out:
        typer.echo(json.dumps({**result.to_dict(), "model": model, "notice": NOTICE}), err=output is None)
    elif not quiet:
        typer.echo(
            summary_text(result, tuple(model["classes"]), model.get("provenance_warnings", ())), err=True
        )


def echo_ray_summary(result: RayScanResult, *, output: Path | None, json_out: bool, quiet: bool) -> None:
    """A Ray scan's end: the local summary, after a line on the cluster (actors, nodes, first rows)."""
    if json_out:
        summary = {**result.to_dict(), "model": result.model, "notice": NOTICE}
        typer.echo(json.dumps(summary), err=output is None)
    elif not quiet:
        gpus = f", {result.gpus_per_actor:g} GPU" if result.gpus_per_actor else ""
        typer.echo(
            f"ray: {result.actors} actors ({result.cpus_per_actor:g} CPU{gpus} each) on {result.nodes} node(s) "
            f"at {result.address}, {result.read} reads; first rows after {result.first_rows_seconds:.1f} s",
            err=True,
        )
        echo_scan_summary(result.scan, result.model, output=output, json_out=False, quiet=False)


def format_prediction(p: Prediction) -> str:
    """One file's result: class, probability, every class probability (and each member's top class)."""
    if not p.ok:
        return f"{p.source}\n  error: {p.error}"
    probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
    lines = [p.source, f"  predicted: {p.label} ({p.probability:.3f})", f"  probabilities: {probs}"]
    if p.assessable is False:
        lines.append(
            "  NOT ASSESSABLE (review before use): " + "; ".join(f"{r.code}: {r.message}" for r in p.reasons)
        )
    if p.above_operating_point is not None:
        flagged = [c for c, above in p.above_operating_point.items() if above]
        lines.append(f"  at or above the operating point: {', '.join(flagged) if flagged else 'none'}")
    for member, mp in (p.member_probabilities or {}).items():
        top = max(mp, key=lambda c: mp[c])
        lines.append(f"  member {member}: {top} ({mp[top]:.3f})")
    return "\n".join(lines)


def quiet_line(p: Prediction) -> str:
    """``file<TAB>class`` (or ERROR), with NOT ASSESSABLE and the reason codes when the gate said so."""
    if not p.ok:
        return f"{p.source}\tERROR"
    if p.assessable is False:
        return f"{p.source}\t{p.label}\tNOT ASSESSABLE ({','.join(r.code for r in p.reasons)})"
    return f"{p.source}\t{p.label}"


def echo_image_results(
    predictor: Predictor, preds: Sequence[Prediction], *, json_out: bool, quiet: bool
) -> None:
    """`cxr-predict image`: one JSON document, one ``file<TAB>class`` line per file, or the full results."""
    if json_out:
        doc = {
            "model": predictor.describe(),
            "predictions": [p.to_dict() for p in preds],
            "failed": sum(not p.ok for p in preds),
            "notice": NOTICE,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    if quiet:
        for p in preds:
            typer.echo(quiet_line(p))
        typer.echo(NOTICE, err=True)
    else:
        for p in preds:
            typer.echo(format_prediction(p))
        typer.echo(
            f"provider '{predictor.info.label}', model {predictor.model_id} ({predictor.model_path.name})"
        )
        typer.echo(NOTICE)


def echo_precision(predictor: Predictor) -> None:
    """The precision ``auto`` chose and why, on stderr (stdout stays the results); nothing when asked for."""
    if predictor.info.note:
        typer.echo(f"precision: {predictor.info.note}", err=True)


def echo_written(opened: Opened) -> None:
    """Where the overlays and DICOM results went (stderr, so stdout stays the results), and what got none."""
    if opened.overlays is not None:
        writer = opened.overlays
        typer.echo(f"heatmaps: {len(writer.written)} overlay PNG(s) in {writer.folder}", err=True)
        for source, why in writer.failed.items():
            warn(f"warning: no overlay for {source}: {why}")
    if opened.dicom is not None:
        dicom = opened.dicom
        typer.echo(
            f"dicom: {len(dicom.written)} SR + secondary capture pair(s) in {dicom.folder}; "
            f"{len(dicom.not_dicom)} input(s) not DICOM (no DICOM results for those)",
            err=True,
        )
        for source, why in dicom.failed.items():
            warn(f"warning: no DICOM results for {source}: {why}")
