"""`cxr-bench`: latency, throughput, memory and efficiency of a cxr model, and comparisons of two runs.

`cxr-bench run --model MODEL` measures every combination of providers, runtime precisions, precision
variants, batch sizes, intra-op threads and client concurrency asked for (plus end-to-end and reference rows
when asked) and prints a table; `--output/--markdown/--plot` persist it. `cxr-bench peak` measures this
host's GEMM peak per precision (every `run` does too, for its efficiency column). `cxr-bench compare
A.json B.json` shows two runs side by side with ratios. A thin layer over ``cxr.bench.run``; torch is never imported (the PyTorch
reference imports it inside its own function, only when it is installed).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr.cli.common import handle_errors, setup_logging
from cxr.errors import ConfigError

if TYPE_CHECKING:
    from cxr.bench.types import BenchRow

app = typer.Typer(
    name="cxr-bench",
    help="Benchmark a cxr ONNX model (fused ensemble or single member) with onnxruntime or OpenVINO: latency "
    "percentiles, images/s, peak memory, session creation, provider and precision really used, efficiency "
    "vs this host's measured GEMM peak.",
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
    out: list[int | None] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        out.append(None if token.lower() in ("default", "auto") else parse_ints(token, "--threads")[0])
    if not out:
        raise ConfigError("--threads is empty", hint="e.g. --threads 1,2 or --threads default")
    return tuple(out)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(t.strip().lower() for t in text.split(",") if t.strip())


def parse_paths(values: list[str] | None) -> tuple[Path, ...]:
    return tuple(Path(p.strip()) for v in values or () for p in v.split(",") if p.strip())


@app.command("run", context_settings={"allow_extra_args": True})  # the old positional MODEL, see below
@handle_errors
def run(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="cxr ONNX model: a fused ensemble or a single exported member; required.",
            show_default=False,
        ),
    ] = None,
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
            help="Comma-separated: auto, fp32, bf16. One row set per provider x precision; onnxruntime runs "
            "a file as stored (auto = fp32 there), bf16 runs on openvino only (verified models).",
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
    member_models: Annotated[
        list[str] | None,
        typer.Option(
            "--member-models",
            help="The fused model's member .onnx files (comma-separated or repeated) or their folder: the "
            "five-separate-sessions reference.",
            show_default=False,
        ),
    ] = None,
    torch_run: Annotated[
        Path | None,
        typer.Option(
            "--torch-run", help="Training run with members/<name> checkpoints: PyTorch eager reference."
        ),
    ] = None,
    torch_best: Annotated[
        bool,
        typer.Option(
            "--torch-best/--no-torch-best",
            help="With --torch-run, also 'PyTorch best' (channels_last, bf16 autocast where the CPU has it).",
        ),
    ] = True,
    openvino_peer: Annotated[
        bool,
        typer.Option(
            "--openvino-peer",
            help="With --member-models: also the members in OpenVINO with its own defaults (BF16 where the CPU "
            "has it, unverified): the peer a user gets without cxr.",
        ),
    ] = False,
    agreement_folder: Annotated[
        Path | None,
        typer.Option(
            "--agreement-folder", help="Real images: top-1 agreement of reduced-precision rows with FP32."
        ),
    ] = None,
    agreement_images: Annotated[
        int, typer.Option("--agreement-images", help="At most this many of them, spread over the folder.")
    ] = 100,
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
            help="Peak GFLOP/s instead of measuring it: one number (FP32) or fp32=N,bf16=N,int8=N; "
            "default $CXR_PEAK_GFLOPS, else measured (see `cxr-bench peak`).",
        ),
    ] = None,
    measure_peak: Annotated[
        bool,
        typer.Option("--measure-peak/--no-measure-peak", help="Measure the GEMM peaks not given (seconds)."),
    ] = True,
    peak_size: Annotated[int, typer.Option("--peak-size", help="M = N = K of the peak GEMMs.")] = 2048,
    strict_provider: Annotated[
        bool, typer.Option("--strict-provider", help="Fail instead of reporting a provider fallback.")
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the random input pixels (without --folder).")
    ] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON report here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown report here.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a latency/throughput PNG (matplotlib).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-row progress on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    members: Annotated[list[str] | None, typer.Option("--members", hidden=True)] = None,
) -> None:
    """Measure MODEL for every combination asked for and print a table."""
    from cxr.bench.plot import matplotlib_missing, missing_error
    from cxr.bench.report import format_terminal, write_outputs
    from cxr.bench.run import BenchConfig, run_bench
    from cxr.cli.common import legacy_positionals, renamed, require

    (model,) = legacy_positionals("cxr-bench run", ctx.args, (model, "MODEL", "--model"))
    model = require(model, "--model MODEL", "cxr-bench run")
    member_models = renamed(member_models, members, old="--members", new="--member-models")
    if verbose:
        setup_logging(verbose=True)
    if plot is not None and matplotlib_missing():
        raise missing_error()
    if iterations is None:
        iterations = MIN_ITERATIONS if min_seconds is not None else DEFAULT_ITERATIONS
    cfg = BenchConfig(
        model=model,
        variants=tuple(variant or ()),
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
        members=parse_paths(member_models),
        torch_run=torch_run,
        torch_best=torch_best,
        openvino_peer=openvino_peer,
        agreement_folder=agreement_folder,
        agreement_images=agreement_images,
        peak_gflops=peak_gflops,
        measure_peak=measure_peak,
        peak_size=peak_size,
        strict_provider=strict_provider,
        seed=seed,
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )

    report = run_bench(cfg, on_row=None if quiet else _progress)
    typer.echo(format_terminal(report))
    for path in write_outputs(report, json_path=output, markdown=markdown, plot=plot):
        typer.echo(f"wrote {path}")


def _progress(row: BenchRow) -> None:
    """One line per measured row on stderr while the run goes on."""
    typer.echo(
        f"  {row.kind} {row.label()} {row.provider} b{row.batch_size} "
        f"t{row.threads or 'default'} c{row.concurrency} {row.mode}: p50 {row.latency_ms.p50:.2f} ms, "
        f"{row.throughput_ips:.1f} img/s",
        err=True,
    )


@app.command("peak")
@handle_errors
def peak(
    size: Annotated[int, typer.Option("--size", help="M = N = K of the square GEMMs.")] = 2048,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", help="onnxruntime/OpenVINO threads; default: usable cores."),
    ] = None,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Timed calls after one warm-up; the best counts.")
    ] = 5,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the figures as JSON.")
    ] = None,
) -> None:
    """Measure this host's GEMM peak GFLOP/s in FP32, BF16 and INT8 with the installed runtimes."""
    import json

    from cxr.bench.machine import busy_note, machine_info, usable_cores
    from cxr.bench.peak import PEAK_PRECISIONS, measure_peaks
    from cxr.bench.report import text_table

    n = threads or usable_cores()
    figs = measure_peaks(PEAK_PRECISIONS, size=size, threads=n, repeats=repeats, fresh=True)
    machine = machine_info(measure_peak=False)
    typer.echo(
        f"{machine.cpu_model}, {machine.usable_cores} usable cores; onnxruntime {machine.onnxruntime}"
        f"{', openvino ' + machine.openvino if machine.openvino else ''}, numpy {machine.numpy}"
    )
    header = ("precision", "GFLOP/s", "runtime", "threads", "size", "every runtime (GFLOP/s)")
    rows = [
        [
            f.precision,
            "-" if f.gflops is None else f"{f.gflops:,.1f}",
            f.runtime or "-",
            "BLAS default" if f.threads is None else str(f.threads),
            f"{f.size}^3",
            ", ".join(f"{k} {v:,.1f}" for k, v in f.candidates.items()) or "-",
        ]
        for f in figs.values()
    ]
    typer.echo(text_table(header, rows))
    for f in figs.values():
        if f.reason:
            typer.echo(f"note: {f.precision}: {f.reason}")
    if (busy := busy_note(machine)) is not None:
        typer.echo(f"note: {busy}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine.to_dict(), "peaks": {k: v.to_dict() for k, v in figs.items()}}
        output.write_text(json.dumps(doc, indent=2) + "\n")
        typer.echo(f"wrote {output}")


@app.command("compare")
@handle_errors
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline report (JSON from `cxr-bench run --output`).")],
    b: Annotated[Path, typer.Argument(help="Candidate report.")],
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the comparison as Markdown.")
    ] = None,
) -> None:
    """Show two runs side by side with B/A ratios of latency and throughput."""
    from cxr.bench.compare import compare_reports, comparison_markdown, format_comparison
    from cxr.bench.report import load_report

    comparison = compare_reports(load_report(a), load_report(b), str(a), str(b))
    typer.echo(format_comparison(comparison))
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(comparison_markdown(comparison))
        typer.echo(f"wrote {markdown}")


@app.command("version")
def version() -> None:
    """Print the cxr version."""
    from cxr import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
