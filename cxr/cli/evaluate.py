"""`cxr evaluate RUN_DIR` and `cxr evaluate-folds RUN_DIR...`, over ``cxr.evaluate``: does stacking help?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import handle_errors, output_option, run_dir_argument, warn
from cxr.labels import NOTICE


@handle_errors
def evaluate(
    run_dir: Annotated[Path, run_dir_argument("Run directory with member predictions and stack/.")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write confusion-matrix and reliability PNGs.")] = True,
    output: Annotated[Path | None, output_option("The report folder (default: RUN_DIR/eval).")] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="The fused graph whose input gate is evaluated (default: RUN_DIR/ensemble.onnx)."),
    ] = None,
) -> None:
    """Compare members, voting and stacking on the test split.

    Each member, soft voting, majority voting and stacking, with bootstrap intervals and McNemar tests;
    the risk-coverage curve and the input gate's point on it.
    """
    from cxr.evaluate import EvalConfig, describe
    from cxr.evaluate import evaluate as run_evaluation

    res = run_evaluation(
        EvalConfig(
            run_dir=run_dir, out_dir=output, n_bootstrap=bootstrap, seed=seed, plots=plots, fused_model=model
        )
    )
    typer.echo(describe(res))
    for w in res.warnings:
        warn(f"note: {w}")
    typer.echo(f"report: {res.report_md} (+ {res.report_json.name}, {len(res.figures)} figures)")
    typer.echo(NOTICE)


@handle_errors
def evaluate_folds(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="The run directories of the folds (each after `cxr evaluate`).")
    ],
    output: Annotated[Path, output_option("The pooled report folder.")] = Path("runs/folds/pooled"),
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Pool the test splits of cross-validation folds.

    The runs of `cxr data split --folds K`: every method on every image, with McNemar tests.
    """
    from cxr.evaluate import PoolConfig, describe_pooled, pool_folds

    res = pool_folds(PoolConfig(tuple(run_dirs), output, n_bootstrap=bootstrap, seed=seed))
    typer.echo(describe_pooled(res))
    for w in res.warnings:
        warn(f"note: {w}")
    typer.echo(f"report: {res.report_md} (+ {res.report_json.name})")
    typer.echo(NOTICE)
