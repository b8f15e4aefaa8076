"""`cxr export RUN_DIR` and `cxr verify RUN_DIR`: thin commands over ``cxr.export.run_export``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import OrtThreads, Verbose, handle_errors, members_option, run_dir_argument, setup_logging
from cxr.export.export_types import DEFAULT_INT8_MAX_PROBABILITY_CHANGE


class ExporterName(str, Enum):
    auto = "auto"
    torchscript = "torchscript"
    dynamo = "dynamo"


RunDir = Annotated[Path, run_dir_argument("Run directory of `cxr train base` (holds members/<name>/).")]
Members = Annotated[str | None, members_option()]
Manifest = Annotated[
    Path | None,
    typer.Option("--manifest", help="Split manifest for val/train images (default: RUN_DIR/manifest.csv)."),
]
MaxVal = Annotated[int, typer.Option("--max-val", help="Val-split images used for verification (cap).")]
Random = Annotated[int, typer.Option("--random", help="Random noise inputs added to the FP32 check.")]
MinAgreement = Annotated[
    float, typer.Option("--min-agreement", help="Top-1 agreement a variant needs vs FP32 to be usable.")
]


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


@handle_errors
def export(
    run_dir: RunDir,
    members: Members = None,
    variants: Annotated[
        str, typer.Option("--variants", help="Comma-separated edge variants to make: fp16, int8.")
    ] = "",
    simplify: Annotated[
        bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim (kept only if verified).")
    ] = True,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (>= 17: LayerNorm is one op).")] = 17,
    exporter: Annotated[
        ExporterName, typer.Option("--exporter", help="auto: cxr's per-architecture choice.")
    ] = ExporterName.auto,
    manifest: Manifest = None,
    max_val: MaxVal = 64,
    max_calib: Annotated[
        int, typer.Option("--max-calib", help="Train-split images used to calibrate INT8 (cap).")
    ] = 300,
    fast_bias_correction: Annotated[
        bool,
        typer.Option(
            help="INT8: NNCF's fast bias correction instead of the full one (minutes instead of tens of minutes "
            "for large members; the full one kept more answers in benchmarks/README.md)."
        ),
    ] = False,
    int8_max_change: Annotated[
        float,
        typer.Option(
            "--int8-max-change",
            help="INT8 accuracy control: keep layers in float until the member's class probabilities move by at "
            "most this much on the val images (mean total-variation distance, 0-1; an image whose top-1 "
            "moves counts 1).",
        ),
    ] = DEFAULT_INT8_MAX_PROBABILITY_CHANGE,
    n_random: Random = 8,
    min_agreement: MinAgreement = 0.99,
    threads: OrtThreads = None,
    verbose: Verbose = False,
) -> None:
    """Export every trained member to ONNX and verify it.

    Each member gets cxr metadata, is verified against PyTorch, and gets the --variants asked for.
    """
    from cxr.export.report import format_table
    from cxr.export.run_export import RunExportConfig, export_run, raise_for_failures

    setup_logging(verbose)
    cfg = RunExportConfig(
        run_dir=run_dir,
        models=_split(members),
        variants=_split(variants) or (),
        simplify=simplify,
        opset=opset,
        exporter=exporter.value,  # type: ignore[arg-type]
        manifest=manifest,
        max_val_images=max_val,
        max_calib_images=max_calib,
        int8_fast_bias_correction=fast_bias_correction,
        int8_max_probability_change=int8_max_change,
        n_random=n_random,
        min_agreement=min_agreement,
        threads=threads,
        strict=False,  # print the table first, then fail
    )
    result = export_run(cfg)
    typer.echo(format_table(result))
    typer.echo(f"\nreport: {result.report_md} (JSON: {result.report_json})")
    raise_for_failures(result)


@handle_errors
def verify(
    run_dir: RunDir,
    members: Members = None,
    manifest: Manifest = None,
    max_val: MaxVal = 64,
    n_random: Random = 8,
    min_agreement: MinAgreement = 0.99,
    threads: OrtThreads = None,
    verbose: Verbose = False,
) -> None:
    """Re-verify a run's ONNX members against their checkpoints.

    Checks RUN_DIR/onnx/<name>.onnx against its checkpoint, and its variants against FP32.
    """
    from cxr.export.report import format_table
    from cxr.export.run_export import RunExportConfig, raise_for_failures, verify_run

    setup_logging(verbose)
    cfg = RunExportConfig(
        run_dir=run_dir,
        models=_split(members),
        manifest=manifest,
        max_val_images=max_val,
        n_random=n_random,
        min_agreement=min_agreement,
        threads=threads,
        strict=False,
    )
    result = verify_run(cfg)
    typer.echo(format_table(result))
    typer.echo(f"\nreport: {result.report_md} (JSON: {result.report_json})")
    raise_for_failures(result)
