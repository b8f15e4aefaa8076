"""`cxr-bench`: latency, throughput, memory and efficiency of a cxr model on this machine (over ``cxr.bench.run``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr.cli.common import handle_errors, setup_logging, version
from cxr.errors import ConfigError

if TYPE_CHECKING:
    from cxr.bench.types import BenchRow

app = typer.Typer(
    rich_markup_mode=None,  # click's layout: descriptions keep their width at 80 columns
    name="cxr-bench",
    help="Benchmark a cxr ONNX model (fused ensemble or single member) with onnxruntime or OpenVINO: latency "
    "percentiles, images/s, peak memory, session creation, provider and precision really used, efficiency "
    "vs this host's GEMM peak.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

MIN_ITERATIONS = 5
"""With --min-seconds alone, at least this many timed calls are made (percentiles need samples)."""
DEFAULT_ITERATIONS = 20


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8); a ConfigError naming the option for anything else."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise ConfigError(
            f"{option} {text!r} is not a comma-separated list of integers", hint=f"e.g. {option} 1,8"
        ) from e
    if not values:
        raise ConfigError(f"{option} is empty", hint=f"e.g. {option} 1,8")
    return values


def parse_threads(text: str) -> tuple[int | None, ...]:
    """'1,2,default' -> (1, 2, None): 'default' leaves onnxruntime's choice (all physical cores)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    out = [None if t.lower() in ("default", "auto") else parse_ints(t, "--threads")[0] for t in tokens]
    if not out:
        raise ConfigError("--threads is empty", hint="e.g. --threads 1,2 or --threads default")
    return tuple(out)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(t.strip().lower() for t in text.split(",") if t.strip())


@app.command("run")
@handle_errors
def run(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="cxr ONNX model: a fused ensemble or a single exported member.",
            show_default=False,
        ),
    ],
    variant: Annotated[
        list[Path] | None,
        typer.Option("--variant", help="Another precision of the same model (FP16/INT8 file); repeatable."),
    ] = None,
    provider: Annotated[
        str,
        typer.Option("--provider", "-p", help="Comma-separated: cpu, cuda, tensorrt, openvino, auto."),
    ] = "cpu",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Comma-separated: auto, fp32, bf16, int8. One row set per provider x precision; bf16 runs on "
            "openvino only, int8 (the verified <model>.int8.onnx beside it) on openvino and cpu; auto is the "
            "fastest verified for this CPU. Rows say the CPU kind they ran as (ONEDNN_MAX_CPU_ISA caps OpenVINO's).",
        ),
    ] = "auto",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", "-b", help="Comma-separated, e.g. 1,8.")] = "1",
    threads: Annotated[
        str,
        typer.Option("--threads", "-t", help="Intra-op threads, comma-separated; 'default' = onnxruntime's."),
    ] = "default",
    concurrency: Annotated[
        str, typer.Option("--concurrency", "-c", help="Client threads, comma-separated, e.g. 1,4.")
    ] = "1",
    pool: Annotated[
        bool, typer.Option("--pool/--no-pool", help="With N > 1 clients, also run them against N sessions.")
    ] = True,
    folder: Annotated[
        Path | None,
        typer.Option("--folder", help="Images for end-to-end rows (decode + preprocess + inference)."),
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before measuring.")] = 3,
    iterations: Annotated[
        int | None,
        typer.Option("--iterations", "-n", help=f"Timed calls per client (default {DEFAULT_ITERATIONS})."),
    ] = None,
    min_seconds: Annotated[
        float | None,
        typer.Option("--min-seconds", help=f"Measure at least this long (and >= {MIN_ITERATIONS} calls)."),
    ] = None,
    peak_gflops: Annotated[
        str | None,
        typer.Option(
            "--peak-gflops",
            help="This host's GEMM peak for eff %: one number (FP32) or fp32=N,bf16=N,int8=N; default "
            "$CXR_PEAK_GFLOPS (`python benchmarks/peak.py` measures them).",
        ),
    ] = None,
    strict_provider: Annotated[
        bool, typer.Option("--strict-provider", help="Fail instead of reporting a provider fallback.")
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the random input pixels (without --folder).")
    ] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON report here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown report here.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Print every column (wider than 100).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-row progress on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Measure MODEL for every combination asked for and print a table."""
    from cxr.bench.report import format_terminal, write_outputs
    from cxr.bench.run import BenchConfig, run_bench
    from cxr.session import SessionConfig

    if verbose:
        setup_logging(verbose=True)
    if iterations is None:
        iterations = MIN_ITERATIONS if min_seconds is not None else DEFAULT_ITERATIONS
    cfg = BenchConfig(
        model=model,
        variants=tuple(variant or ()),
        session=SessionConfig(strict_provider=strict_provider),
        providers=parse_names(provider),
        precisions=parse_names(precision),
        batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
        threads=parse_threads(threads),
        concurrency=parse_ints(concurrency, "--concurrency"),
        pool=pool,
        warmup=warmup,
        iterations=iterations,
        min_seconds=min_seconds or 0.0,
        folder=folder,
        peak_gflops=peak_gflops,
        seed=seed,
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    report = run_bench(cfg, on_row=None if quiet else _progress)
    typer.echo(format_terminal(report, wide=wide))
    for path in write_outputs(report, json_path=output, markdown=markdown):
        typer.echo(f"wrote {path}")


def _progress(row: BenchRow) -> None:
    """One line per measured row on stderr while the run goes on."""
    typer.echo(
        f"  {row.kind} {row.label()} {row.provider} b{row.batch_size} "
        f"t{row.threads or 'default'} c{row.concurrency} {row.mode}: p50 {row.latency_ms.p50:.2f} ms, "
        f"{row.throughput_ips:.1f} img/s",
        err=True,
    )


app.command("version")(version)


if __name__ == "__main__":
    app()
