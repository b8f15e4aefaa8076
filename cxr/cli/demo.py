"""`cxr demo`: the whole study end to end, on synthetic X-rays by default or on the real data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import handle_errors, setup_logging
from cxr.labels import NOTICE

DEFAULT_RUN_DIR = Path("runs/demo")


@handle_errors
def demo(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="RUN_DIR",
            help=f"Where every artefact of the run goes (default: {DEFAULT_RUN_DIR}).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="The real COVID-19 Radiography Database (Kaggle layout); default: synthetic X-rays."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Training config; default configs/demo.yaml, or configs/paper.yaml with --data."),
    ] = None,
    per_class: Annotated[int, typer.Option(help="Synthetic images per class.")] = 80,
    seed: Annotated[int, typer.Option(help="Seed for data, split and training.")] = 0,
    force: Annotated[
        list[str] | None,
        typer.Option(help="Redo this stage (and all after it); repeatable; 'all' for every one."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Training config override key=value; repeatable.")
    ] = None,
    variants: Annotated[
        str, typer.Option(help="Precision variants to build: '', 'int8', 'fp16,int8'.")
    ] = "int8",
    threads: Annotated[
        int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores).")
    ] = None,
    bench_iterations: Annotated[int, typer.Option(help="Timed iterations per benchmark row.")] = 10,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Run the whole study end to end.

    Data, split, train 5 CNNs, export and verify, stack, fuse, evaluate, scan, bench.
    """
    import time

    from cxr.demo.config import DemoConfig
    from cxr.demo.pipeline import run_demo

    setup_logging(verbose)
    cfg = DemoConfig(
        run_dir=run_dir or DEFAULT_RUN_DIR,
        data=data,
        train_config=config,
        per_class=per_class,
        seed=seed,
        variants=tuple(v for v in variants.split(",") if v),
        force=tuple(force or ()),
        overrides=tuple(set_ or ()),
        threads=threads,
        bench_iterations=bench_iterations,
    )
    t0 = time.perf_counter()
    res = run_demo(cfg, echo=typer.echo)
    typer.echo("")
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; every artefact is indexed in {res.index}")
    typer.echo(f"the fused model: {res.run_dir / 'ensemble.onnx'}  (try: cxr-predict image FILE --model ...)")
    if data is None:
        typer.echo("the images were SYNTHETIC: these scores show the pipeline works, not medical performance")
    typer.echo(NOTICE)
