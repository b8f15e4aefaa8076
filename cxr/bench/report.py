"""Takes a ``BenchReport``; makes the terminal table, the JSON and Markdown files, and reads the JSON back."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import DataError

WIDTH = 100  # the default terminal table and its legend fit this many columns
METHOD = (
    "Method: {warmup} warm-up calls, then at least {iterations} timed calls{min_s} per client "
    "(time.perf_counter around each call; one call = one batch); percentiles by numpy's linear "
    "interpolation (Hyndman-Fan type 7), std is the sample std, nothing is trimmed."
)


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"


def _ms(v: float) -> str:
    return _num(v, 3 if v < 1 else 2 if v < 10 else 1)


def agreement_cell(row: BenchRow) -> str:
    """``99.0 (100)``: top-1 agreement % with FP32 and the number of images, or ``-``."""
    a = row.agreement
    if not a or a.get("top1") is None:
        return "-"
    return f"{100 * float(a['top1']):.1f} ({a.get('images', '?')})"


def _rss(r: BenchRow) -> str:
    return f"{_num(r.peak_rss_mb, 0)}{'' if r.rss_scope == 'row' else '*'}"


def _eff(r: BenchRow) -> str:
    return _num(r.efficiency_pct, 1 if (r.efficiency_pct or 0) < 10 else 0)


Column = tuple[str, Callable[[BenchRow], str], str]  # header, cell, legend
FULL: tuple[Column, ...] = (
    ("configuration", BenchRow.label, "model file, precision that really ran, row kind (e2e: decode + run)"),
    (
        "provider",
        lambda r: r.provider if r.provider_ok else f"{r.provider} (asked {r.provider_requested}!)",
        "what really ran it",
    ),
    ("batch", lambda r: str(r.batch_size), "images per call"),
    (
        "cpu kind",
        lambda r: (r.cpu_kind or "-") + (f" ({r.isa_cap})" if r.isa_cap else ""),
        "the CPU kind the row ran as (cxr.cpu_kind), under ONEDNN_MAX_CPU_ISA when set; -: a GPU",
    ),
    ("threads", lambda r: "default" if r.threads is None else str(r.threads), "intra-op threads"),
    (
        "clients",
        lambda r: f"{r.concurrency}{' pool' if r.mode == 'pool' else ''}",
        "client threads (pool: a session each)",
    ),
    ("p50 ms", lambda r: _ms(r.latency_ms.p50), "latency per call, median"),
    ("p90 ms", lambda r: _ms(r.latency_ms.p90), "90th percentile"),
    ("p95 ms", lambda r: _ms(r.latency_ms.p95), "95th percentile"),
    ("p99 ms", lambda r: _ms(r.latency_ms.p99), "99th percentile"),
    ("max ms", lambda r: _ms(r.latency_ms.max), "slowest call"),
    ("mean±std ms", lambda r: f"{_ms(r.latency_ms.mean)}±{_ms(r.latency_ms.std)}", "mean and sample std"),
    ("ms/img", lambda r: _ms(r.latency_per_image_ms.mean), "mean latency per image"),
    ("img/s", lambda r: _num(r.throughput_ips, 1), "images per second, all clients together"),
    ("eff %", _eff, "achieved GFLOP/s / this host's GEMM peak for the precision that ran (--peak-gflops)"),
    ("agree %", agreement_cell, "top-1 agreement with FP32 (images)"),
    ("RSS MB", _rss, "peak resident memory of the row (*: of the process)"),
    ("load s", lambda r: _num(r.session_create_s, 2), "seconds to create the row's sessions"),
    (
        "outl",
        lambda r: f"{r.latency_ms.outliers}/{r.latency_ms.count}",
        "calls above Q3 + 1.5 IQR / calls (kept)",
    ),
)
COMPACT: tuple[Column, ...] = (
    FULL[0],
    ("provider", lambda r: r.provider + ("" if r.provider_ok else "!"), "what ran it (!: a fallback)"),
    ("b", FULL[2][1], "images per call"),
    ("thr", lambda r: "-" if r.threads is None else str(r.threads), "intra-op threads (-: onnxruntime's)"),
    (
        "cli",
        lambda r: f"{r.concurrency}{'p' if r.mode == 'pool' else ''}",
        "client threads (p: a session each)",
    ),
    ("p50 ms", FULL[6][1], "latency per call, median"),
    ("p99 ms", FULL[9][1], "99th percentile"),
    ("ms/img", FULL[12][1], FULL[12][2]),
    ("img/s", FULL[13][1], FULL[13][2]),
    ("eff %", _eff, "achieved GFLOP/s / GEMM peak (--peak-gflops)"),
    ("RSS MB", _rss, "peak resident memory (*: of the process)"),
)


def _shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters (file names differ at both ends)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """Columns separated by two spaces, the first left-aligned; with ``width``, the first is cut to fit."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    if width is not None:
        widths[0] = max(len(header[0]), min(widths[0], width - sum(widths[1:]) - 2 * (len(widths) - 1)))

    def line(cells: Sequence[str]) -> str:
        cells = [_shorten(cells[0], widths[0]), *cells[1:]]
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cells(cs: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cs) + " |"

    return "\n".join([cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows)])


def legend(columns: Sequence[Column], width: int = WIDTH, more: str = "") -> str:
    """``columns: b = images per call; ...`` (then ``more``) wrapped to ``width``."""
    text = "columns: " + "; ".join(f"{h} = {doc}" for h, _, doc in columns) + "." + more
    return textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False)


def stage_lines(report: BenchReport) -> list[str]:
    """Where end-to-end time goes: decode / preprocess / inference per batch, beside pure inference."""

    def same(r: BenchRow) -> tuple[object, ...]:
        return (r.model, r.provider_requested, r.batch_size, r.threads)

    # the first single-client inference row of each configuration (reversed: the first one wins)
    inference = {same(r): r for r in reversed(report.rows) if r.kind == "inference" and r.concurrency == 1}
    out = []
    for row in (r for r in report.rows if r.kind == "end_to_end" and r.stages_ms):
        stages = row.stages_ms or {}
        total = sum(stages.values()) or 1.0
        parts = ", ".join(f"{k} {_ms(v)} ms ({100 * v / total:.0f}%)" for k, v in stages.items())
        pure = inference.get(same(row))
        extra = f"; pure inference on pre-decoded tensors: {_ms(pure.latency_ms.mean)} ms" if pure else ""
        threads = "default" if row.threads is None else row.threads
        out.append(
            f"{row.label()} {row.provider} b{row.batch_size} t{threads}: {_ms(total)} ms = {parts}{extra}"
        )
    return out


def _tail(report: BenchReport) -> list[str]:
    """End-to-end stages, provider fallbacks and notes, as plain lines."""
    out: list[str] = []
    if stages := stage_lines(report):
        out += ["", "end-to-end (decode + preprocess + inference):", *("  " + s for s in stages)]
    fallbacks = [r for r in report.rows if not r.provider_ok]
    if warns := dict.fromkeys(
        f"{r.model}: asked for {r.provider_requested}, ran on {r.provider}" for r in fallbacks
    ):
        out += ["", "PROVIDER FALLBACK:", *("  " + w for w in warns)]
    return out + ([""] if report.notes else []) + ["note: " + n for n in report.notes]


def cpu_kinds_line(report: BenchReport) -> str:
    """Which CPU kind each provider's rows ran as (``cxr.cpu_kind``), and the oneDNN ISA cap when set."""
    kinds = sorted({f"{r.provider} as {r.cpu_kind}" for r in report.rows if r.cpu_kind})
    cap = next((r.isa_cap for r in report.rows if r.isa_cap), None)
    return f"CPU kind: {', '.join(kinds) or '-'}" + (f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else "")


def format_terminal(report: BenchReport, wide: bool = False) -> str:
    """The table (every column with ``wide``; else one that fits ``WIDTH`` columns) and its legend."""
    columns = FULL if wide else COMPACT
    table = text_table(
        [h for h, _, _ in columns],
        [[cell(r) for _, cell, _ in columns] for r in report.rows],
        None if wide else WIDTH,
    )
    head = [
        f"cxr-bench {report.cxr_version}  {report.created}",
        *textwrap.wrap(f"machine: {report.machine.summary()}", WIDTH, subsequent_indent="  "),
        f"GEMM peaks: {report.machine.peaks_line()}",
        cpu_kinds_line(report),
        "",
    ]
    tail = [w for line in _tail(report) for w in textwrap.wrap(line, WIDTH, subsequent_indent="    ") or [""]]
    more = "" if wide else " --wide: every column."
    return "\n".join([*head, table, "", legend(columns, more=more), *tail])


def format_markdown(report: BenchReport) -> str:
    cfg = report.config
    min_s = cfg.get("min_seconds") or 0
    method = METHOD.format(
        warmup=cfg.get("warmup", "?"),
        iterations=cfg.get("iterations", "?"),
        min_s=f" and at least {min_s:g} s" if min_s else "",
    )
    parts = [
        "# cxr-bench results",
        "",
        f"- date: {report.created}",
        f"- cxr: {report.cxr_version}",
        f"- machine: {report.machine.summary()}",
        f"- GEMM peaks (eff % denominators): {report.machine.peaks_line()}",
        f"- {cpu_kinds_line(report)}",
        f"- command: `{report.command}`" if report.command else "- command: (library call)",
        "",
        markdown_table([h for h, _, _ in FULL], [[cell(r) for _, cell, _ in FULL] for r in report.rows]),
        "",
        legend(FULL, width=10_000),
        *_tail(report),
        "",
        method,
        "",
    ]
    return "\n".join(parts)


def write_outputs(
    report: BenchReport, *, json_path: Path | None = None, markdown: Path | None = None
) -> list[Path]:
    """Persist ``report`` to every path given; returns the files written."""
    written = []
    for path, text in (
        (json_path, lambda: json.dumps(report.to_dict(), indent=2) + "\n"),
        (markdown, lambda: format_markdown(report)),
    ):
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text())
            written.append(path)
    return written


def load_report(path: Path | str) -> BenchReport:
    """Read a JSON report written by ``write_outputs``; ``DataError`` naming the file when it is not one."""
    path = Path(path)
    hint = "pass a JSON file written by `cxr-bench run --output`"
    if not path.is_file():
        raise DataError(f"report {path} does not exist", hint=hint, path=path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"report {path} is not valid JSON ({e})", hint=hint, path=path) from e
    return BenchReport.from_dict(data, source=str(path))
