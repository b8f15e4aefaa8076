"""The one writer of cxr-bench results: terminal table, JSON, Markdown (and PNG via ``cxr.bench.plot``).

Takes: a ``BenchReport``. Makes: text for the terminal, a JSON file (schema in ``bench_types``), a
Markdown file with date, machine, command, method and the same table, and reads JSON reports back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import DataError

METHOD = (
    "Method: {warmup} warm-up calls, then at least {iterations} timed calls{min_s} per client "
    "(time.perf_counter around each call; one call = one batch). Percentiles by linear interpolation "
    "(numpy 'linear', Hyndman-Fan type 7); std is the sample std; nothing is trimmed: 'outl' counts "
    "calls above Q3 + 1.5 IQR, all of them included in every statistic. img/s = images of all calls / "
    "measured window (all clients). eff % = FLOPs per image (counted from the FP32 graph at export) x img/s / "
    "this host's GEMM peak in the precision the row really ran (FP32 rows / FP32 peak, BF16 / BF16, INT8 / "
    "INT8: the fastest of numpy, onnxruntime and OpenVINO on a square GEMM, measured at the start of the run "
    "unless --peak-gflops gives it; see 'GEMM peaks' above). agree % = top-1 agreement with the FP32 file "
    "on onnxruntime over the real images given (reduced-precision rows; PyTorch best: its worst member vs "
    "FP32 eager). load s = Predictor.from_path wall time (onnxruntime "
    "session with graph optimisation, metadata check, model hash), summed over the sessions a row uses. "
    "Peak RSS scope 'row' = this configuration's own peak (the kernel's high-water mark reset before it), "
    "'process' = process-lifetime maximum."
)

COLUMNS: tuple[str, ...] = (
    "configuration",
    "provider",
    "batch",
    "threads",
    "clients",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "mean±std ms",
    "ms/img",
    "img/s",
    "eff %",
    "agree %",
    "RSS MB",
    "load s",
    "outl",
)


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"


def _ms(v: float) -> str:
    return _num(v, 3 if v < 1 else 2 if v < 10 else 1)


def provider_cell(row: BenchRow) -> str:
    if row.provider_ok:
        return row.provider
    return f"{row.provider} (asked {row.provider_requested}!)"


def agreement_cell(row: BenchRow) -> str:
    """``99.0 (100)``: top-1 agreement % with FP32 and the number of images, or ``-``."""
    a = row.agreement
    if not a or a.get("top1") is None:
        return "-"
    return f"{100 * float(a['top1']):.1f} ({a.get('images', '?')})"


def row_cells(row: BenchRow) -> list[str]:
    lat, per = row.latency_ms, row.latency_per_image_ms
    clients = str(row.concurrency) + (f" {row.mode}" if row.mode == "pool" else "")
    return [
        row.label(),
        provider_cell(row),
        str(row.batch_size),
        "default" if row.threads is None else str(row.threads),
        clients,
        _ms(lat.p50),
        _ms(lat.p90),
        _ms(lat.p95),
        _ms(lat.p99),
        _ms(lat.max),
        f"{_ms(lat.mean)}±{_ms(lat.std)}",
        _ms(per.mean),
        _num(row.throughput_ips, 1),
        _num(row.efficiency_pct, 1 if (row.efficiency_pct or 0) < 10 else 0),
        agreement_cell(row),
        f"{_num(row.peak_rss_mb, 0)}{'' if row.rss_scope == 'row' else '*'}",
        _num(row.session_create_s, 2),
        f"{row.latency_ms.outliers}/{row.latency_ms.count}",
    ]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def stage_lines(report: BenchReport) -> list[str]:
    """Where end-to-end time goes: decode / preprocess / inference per batch, beside pure inference."""
    out = []
    for row in report.rows:
        if row.kind != "end_to_end" or not row.stages_ms:
            continue
        total = sum(row.stages_ms.values()) or 1.0
        parts = ", ".join(f"{k} {_ms(v)} ms ({100 * v / total:.0f}%)" for k, v in row.stages_ms.items())
        pure = next(
            (
                r
                for r in report.rows
                if r.kind == "inference"
                and r.model == row.model
                and r.provider_requested == row.provider_requested
                and r.batch_size == row.batch_size
                and r.threads == row.threads
                and r.concurrency == 1
            ),
            None,
        )
        extra = f"; pure inference on pre-decoded tensors: {_ms(pure.latency_ms.mean)} ms" if pure else ""
        threads = "default" if row.threads is None else row.threads
        out.append(
            f"{row.label()} {row.provider} b{row.batch_size} t{threads}: mean {_ms(total)} ms per batch = "
            f"{parts}{extra}"
        )
    return out


def warning_lines(report: BenchReport) -> list[str]:
    seen: list[str] = []
    for row in report.rows:
        if not row.provider_ok:
            msg = f"{row.model}: asked for {row.provider_requested}, ran on {row.provider}"
            if msg not in seen:
                seen.append(msg)
    return seen


def _method(report: BenchReport) -> str:
    cfg = report.config
    min_s = cfg.get("min_seconds") or 0
    return METHOD.format(
        warmup=cfg.get("warmup", "?"),
        iterations=cfg.get("iterations", "?"),
        min_s=f" and at least {min_s:g} s" if min_s else "",
    )


def format_terminal(report: BenchReport) -> str:
    parts = [
        f"cxr-bench {report.cxr_version}  {report.created}",
        f"machine: {report.machine.summary()}",
        f"GEMM peaks: {report.machine.peaks_line()}",
        "",
        text_table(COLUMNS, [row_cells(r) for r in report.rows]),
    ]
    if any(r.rss_scope != "row" for r in report.rows):
        parts.append("* RSS is the process-lifetime maximum")
    stages = stage_lines(report)
    if stages:
        parts += ["", "end-to-end (decode + preprocess + inference):", *("  " + s for s in stages)]
    warns = warning_lines(report)
    if warns:
        parts += ["", "PROVIDER FALLBACK:", *("  " + w for w in warns)]
    if report.notes:
        parts += ["", *("note: " + n for n in report.notes)]
    return "\n".join(parts)


def format_markdown(report: BenchReport) -> str:
    parts = [
        "# cxr-bench results",
        "",
        f"- date: {report.created}",
        f"- cxr: {report.cxr_version}",
        f"- machine: {report.machine.summary()}",
        f"- GEMM peaks (eff % denominators): {report.machine.peaks_line()}",
        f"- command: `{report.command}`" if report.command else "- command: (library call)",
        "",
        markdown_table(COLUMNS, [row_cells(r) for r in report.rows]),
        "",
    ]
    stages = stage_lines(report)
    if stages:
        parts += ["End-to-end (decode + preprocess + inference, one thread decoding):", ""]
        parts += [f"- {s}" for s in stages] + [""]
    warns = warning_lines(report)
    if warns:
        parts += ["**Provider fallback:**", ""] + [f"- {w}" for w in warns] + [""]
    parts += [f"- note: {n}" for n in report.notes]
    parts += ["", _method(report), ""]
    return "\n".join(parts)


def write_json(report: BenchReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def write_markdown(report: BenchReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_markdown(report))
    return path


def write_outputs(
    report: BenchReport,
    *,
    json_path: Path | None = None,
    markdown: Path | None = None,
    plot: Path | None = None,
) -> list[Path]:
    """Persist ``report`` to every path given; returns the files written."""
    written = []
    if json_path is not None:
        written.append(write_json(report, json_path))
    if markdown is not None:
        written.append(write_markdown(report, markdown))
    if plot is not None:
        from cxr.bench.plot import write_plot

        written.append(write_plot(report, plot))
    return written


def load_report(path: Path | str) -> BenchReport:
    """Read a JSON report written by ``write_json``; ``DataError`` naming the file when it is not one."""
    path = Path(path)
    hint = "pass a JSON file written by `cxr-bench run --output`"
    if not path.is_file():
        raise DataError(f"report {path} does not exist", hint=hint, path=path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"report {path} is not valid JSON ({e})", hint=hint, path=path) from e
    return BenchReport.from_dict(data, source=str(path))
