"""`cxr stack RUN_DIR`: the meta-learner, over ``cxr.stack.fit_meta``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import handle_errors, member_names, members_option, run_dir_argument, warn


def parse_targets(text: str) -> dict[str, float]:
    """``"COVID=0.95,Normal=0.9"`` -> {class: sensitivity}, or a ConfigError naming the bad item."""
    from cxr.errors import ConfigError

    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(
                f"--target-sensitivity item {item!r} is not CLASS=SENSITIVITY",
                hint="e.g. --target-sensitivity 'COVID=0.95,Viral Pneumonia=0.9'",
            )
    return out


@handle_errors
def stack(
    run_dir: Annotated[
        Path, run_dir_argument("Run directory with manifest.csv and members/<name>/predictions/.")
    ],
    members: Annotated[
        str | None, members_option("Comma-separated member order (default: every member folder, sorted).")
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="val: the validation split (blending); blend: the blend split of `cxr data split --blend`."
        ),
    ] = "val",
    estimator: Annotated[
        str, typer.Option(help="Meta-learner: logistic_regression (default), lda or gaussian_nb.")
    ] = "logistic_regression",
    cv_folds: Annotated[
        int, typer.Option(help="Cross-validation folds for choosing the regularisation.")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation folds.")] = 0,
    opset: Annotated[int, typer.Option(help="ONNX opset of meta.onnx (the members' opset).")] = 17,
    calibrate: Annotated[
        bool,
        typer.Option(help="Temperature-scale the stacked output (fitted on cross-validated predictions)."),
    ] = True,
    target_sensitivity: Annotated[
        str | None,
        typer.Option(
            help="Operating points, CLASS=SENSITIVITY comma-separated, e.g. 'COVID=0.95' (default: 0.95 for "
            "every class); each threshold is chosen on the cross-validated validation predictions."
        ),
    ] = None,
) -> None:
    """Fit the meta-learner on held-out member predictions.

    The predictions are for images the base models never trained on (--source).
    """
    from cxr.stack import MetaConfig, describe, fit_meta

    res = fit_meta(
        MetaConfig(
            run_dir=run_dir,
            members=member_names(members),
            source=source,  # type: ignore[arg-type]  # MetaConfig refuses anything but val/blend
            estimator=estimator,
            cv_folds=cv_folds,
            seed=seed,
            opset=opset,
            calibrate=calibrate,
            target_sensitivity=None if target_sensitivity is None else parse_targets(target_sensitivity),
        )
    )
    typer.echo(describe(res))
    for w in res.warnings:
        warn(f"warning: {w}")
