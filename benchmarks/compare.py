"""Two cxr-bench reports side by side, with ratios: ``python benchmarks/compare.py A.json B.json [--markdown C.md]``.

Takes: two ``BenchReport`` objects (A = baseline, B = candidate). Makes: a ``Comparison``: rows matched
on ``BenchRow.key()`` (kind, model kind, precision, provider asked, batch, threads, clients, mode), each
with B/A ratios of p50 and p99 latency and of throughput, plus the rows found in only one report.
Latency ratio < 1 and throughput ratio > 1 both mean B is faster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.bench.report import load_report, markdown_table, text_table
from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import CxrError

HEADER: tuple[str, ...] = (
    "configuration",
    "batch",
    "threads",
    "clients",
    "A p50 ms",
    "B p50 ms",
    "B/A",
    "A p99 ms",
    "B p99 ms",
    "B/A",
    "A img/s",
    "B img/s",
    "B/A",
)


def _ratio(b: float, a: float) -> float | None:
    return b / a if a > 0 else None


@dataclass(frozen=True)
class PairedRow:
    key: str
    a: BenchRow
    b: BenchRow

    @property
    def p50_ratio(self) -> float | None:
        return _ratio(self.b.latency_ms.p50, self.a.latency_ms.p50)

    @property
    def p99_ratio(self) -> float | None:
        return _ratio(self.b.latency_ms.p99, self.a.latency_ms.p99)

    @property
    def throughput_ratio(self) -> float | None:
        return _ratio(self.b.throughput_ips, self.a.throughput_ips)


@dataclass(frozen=True)
class Comparison:
    a_name: str
    b_name: str
    a: BenchReport
    b: BenchReport
    pairs: tuple[PairedRow, ...]
    only_a: tuple[BenchRow, ...]
    only_b: tuple[BenchRow, ...]


def _keyed(rows: Sequence[BenchRow]) -> dict[str, BenchRow]:
    out: dict[str, BenchRow] = {}
    for row in rows:
        key = row.key()
        if key in out:  # the same configuration for two files of one precision: tell them apart by name
            key = f"{key}|{row.model}"
        out[key] = row
    return out


def compare_reports(a: BenchReport, b: BenchReport, a_name: str = "A", b_name: str = "B") -> Comparison:
    ka, kb = _keyed(a.rows), _keyed(b.rows)
    pairs = tuple(PairedRow(k, ka[k], kb[k]) for k in ka if k in kb)
    return Comparison(
        a_name,
        b_name,
        a,
        b,
        pairs,
        tuple(r for k, r in ka.items() if k not in kb),
        tuple(r for k, r in kb.items() if k not in ka),
    )


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _cells(p: PairedRow) -> list[str]:
    a, b = p.a, p.b
    threads = "default" if a.threads is None else str(a.threads)
    clients = str(a.concurrency) + (f" {a.mode}" if a.mode == "pool" else "")
    return [
        f"{a.label()} {a.provider_requested}",
        str(a.batch_size),
        threads,
        clients,
        f"{a.latency_ms.p50:.2f}",
        f"{b.latency_ms.p50:.2f}",
        _r(p.p50_ratio),
        f"{a.latency_ms.p99:.2f}",
        f"{b.latency_ms.p99:.2f}",
        _r(p.p99_ratio),
        f"{a.throughput_ips:.1f}",
        f"{b.throughput_ips:.1f}",
        _r(p.throughput_ratio),
    ]


def _head(c: Comparison) -> list[str]:
    return [
        f"A = {c.a_name}: {c.a.created}, {c.a.machine.summary()}",
        f"B = {c.b_name}: {c.b.created}, {c.b.machine.summary()}",
    ]


def _tail(c: Comparison) -> list[str]:
    out = ["B/A: latency below 1.00x and img/s above 1.00x mean B is faster."]
    out += [f"only in A: {r.key()}" for r in c.only_a]
    out += [f"only in B: {r.key()}" for r in c.only_b]
    if not c.pairs:
        out.append(
            "no configuration appears in both reports (keys: kind|model kind|precision|provider|b|t|c|mode)"
        )
    return out


def format_comparison(c: Comparison) -> str:
    return "\n".join([*_head(c), "", text_table(HEADER, [_cells(p) for p in c.pairs]), "", *_tail(c)])


def comparison_markdown(c: Comparison) -> str:
    return "\n".join(
        [
            "# cxr-bench comparison",
            "",
            *(f"- {line}" for line in _head(c)),
            "",
            markdown_table(HEADER, [_cells(p) for p in c.pairs]),
            "",
            *(f"- {line}" for line in _tail(c)),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Show two cxr-bench runs side by side with B/A ratios.")
    p.add_argument("a", type=Path, help="baseline report (JSON from `cxr-bench run --output`)")
    p.add_argument("b", type=Path, help="candidate report")
    p.add_argument("--markdown", type=Path, default=None, help="also write the comparison as Markdown")
    args = p.parse_args(argv)
    try:
        comparison = compare_reports(load_report(args.a), load_report(args.b), str(args.a), str(args.b))
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(comparison))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(comparison_markdown(comparison))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
