"""`make bench`: the project's published CPU numbers, reproducibly, with the project's own tools.

Takes: this machine (all its usable cores), ``CXR_PEAK_GFLOPS`` or ``--peak-gflops`` for efficiency %.
Makes: ``runs/paper/`` (the five paper members at 224 px with random weights, their INT8 variants, the fused
FP32 and INT8 ensembles; see ``paper_members.py``), the cxr-bench reports in ``runs/paper/bench/`` (JSON,
Markdown, PNG) and ``runs/paper/bench/summary.md``: README-ready rows with date, machine and commands.
Copy that table into ``benchmarks/README.md`` when the CPU was quiet during the run.

Usage:
    CXR_PEAK_GFLOPS=234 python benchmarks/run_cpu.py            # the published numbers (long: ~30 min)
    python benchmarks/run_cpu.py --quick                         # 64 px smoke run of the pipeline (never publish)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import paper_members  # noqa: E402


def summary_markdown(bench_dir: Path) -> str:
    """One compact table over every report in ``bench_dir``, with date, machine and commands."""
    from cxr.bench.report import load_report, markdown_table

    reports = [load_report(p) for p in sorted(bench_dir.glob("*.json"))]
    if not reports:
        return "no cxr-bench reports found\n"
    header = ("model", "precision", "run as", "provider", "batch", "threads", "p50 ms", "p90 ms", "p99 ms")
    header += ("ms/img", "img/s", "eff %", "peak RSS MB")
    rows = []
    for rep in reports:
        for r in rep.rows:
            if r.concurrency != 1:
                continue
            how = {
                "inference": "one session",
                "members_separate": "5 separate sessions" if r.sessions == 5 else f"{r.sessions} sessions",
                "torch_eager": "PyTorch eager",
                "end_to_end": "end to end",
            }[r.kind]
            rows.append(
                [
                    r.model,
                    r.precision,
                    how,
                    r.provider,
                    str(r.batch_size),
                    "default" if r.threads is None else str(r.threads),
                    f"{r.latency_ms.p50:.1f}",
                    f"{r.latency_ms.p90:.1f}",
                    f"{r.latency_ms.p99:.1f}",
                    f"{r.latency_per_image_ms.mean:.1f}",
                    f"{r.throughput_ips:.2f}",
                    "-" if r.efficiency_pct is None else f"{r.efficiency_pct:.0f}",
                    f"{r.peak_rss_mb:.0f}",
                ]
            )
    first = reports[0]
    lines = [
        f"- date: {first.created}",
        f"- machine: {first.machine.summary()}",
        *(f"- command: `{rep.command}`" for rep in reports),
        "",
        markdown_table(header, rows),
        "",
        *(f"- note: {n}" for rep in reports for n in rep.notes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Publishable CPU benchmark of the paper ensemble.")
    p.add_argument("--quick", action="store_true", help="64 px, batch 1, 3 iterations: a smoke run only")
    p.add_argument(
        "--out", type=Path, default=None, help="default runs/paper (runs/paper-quick with --quick)"
    )
    p.add_argument("--peak-gflops", type=float, default=None, help="default: $CXR_PEAK_GFLOPS")
    p.add_argument("--per-member", action="store_true", help="also each member FP32 vs INT8")
    a = p.parse_args(argv)
    out = a.out or ROOT / "runs" / ("paper-quick" if a.quick else "paper")
    args = ["--out", str(out)]
    if a.quick:
        args += ["--size", "64", "--batch-sizes", "1", "--iterations", "3", "--warmup", "1"]
    if a.peak_gflops is not None:
        args += ["--peak-gflops", str(a.peak_gflops)]
    if a.per_member:
        args.append("--per-member")
    rc = paper_members.main(args)
    if rc != 0:
        return rc
    summary = out / "bench" / "summary.md"
    summary.write_text(summary_markdown(out / "bench"))
    print(summary.read_text())
    print(f"wrote {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
