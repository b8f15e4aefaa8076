"""A latency/throughput chart of a cxr-bench report (PNG), like perf_analyzer's trade-off curve.

Takes: a ``BenchReport`` and an output path. Makes: a PNG: x = p50 latency per call (ms, log scale)
with a bar to p99, y = images/s; one line per series (configuration without batch size and clients),
each point labelled with its batch size and number of clients.
matplotlib is imported here only, lazily, with the Agg backend; without it a ``ConfigError`` says how to
install it (``matplotlib_missing`` lets ``study.py`` check before measuring anything).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import ConfigError


def missing_error() -> ConfigError:
    return ConfigError(
        "--plot needs matplotlib, which is not installed",
        hint="pip install matplotlib (it is in cxr-toolkit's dev and train extras), or drop --plot",
    )


def matplotlib_missing() -> bool:
    return importlib.util.find_spec("matplotlib") is None


def _series(row: BenchRow) -> str:
    threads = "default" if row.threads is None else row.threads
    return f"{row.label()} {row.provider} t{threads} {row.mode}"


def write_plot(report: BenchReport, path: Path) -> Path:
    if matplotlib_missing():
        raise missing_error()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[BenchRow]] = {}
    for row in report.rows:
        series.setdefault(_series(row), []).append(row)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: (r.latency_ms.p50, r.throughput_ips))
        xs = [r.latency_ms.p50 for r in rows]
        ys = [r.throughput_ips for r in rows]
        err = [[0.0] * len(rows), [r.latency_ms.p99 - r.latency_ms.p50 for r in rows]]
        ax.errorbar(xs, ys, xerr=err, marker="o", capsize=3, label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(
                f"b{r.batch_size} c{r.concurrency}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, p50 (bar to p99), ms")
    ax.set_ylabel("throughput, images/s")
    ax.set_title(f"cxr-bench {report.created}\n{report.machine.cpu_model}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
