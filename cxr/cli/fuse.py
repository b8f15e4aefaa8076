"""`cxr fuse RUN_DIR`: the members and the meta-learner as one verified ONNX graph, over ``cxr.fuse.fuse``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import OrtThreads, handle_errors, output_option, run_dir_argument
from cxr.labels import NOTICE


@handle_errors
def fuse(
    run_dir: Annotated[Path, run_dir_argument("Run directory with onnx/<name>.onnx and stack/meta.onnx.")],
    variants: Annotated[
        str,
        typer.Option(
            help="Also build variants from the members' variants, e.g. fp16,int8 (INT8 runs in FP32 each "
            "member without a usable <name>.int8.onnx, and names it)."
        ),
    ] = "",
    output: Annotated[Path | None, output_option("The fused graph (default: RUN_DIR/ensemble.onnx).")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Square input size of the graph (default: the largest member size).")
    ] = None,
    simplify: Annotated[bool, typer.Option(help="Simplify the FP32 graph with onnxsim.")] = True,
    end_to_end: Annotated[
        bool, typer.Option(help="Verify top-1 against the PyTorch test predictions on the test images.")
    ] = True,
    e2e_limit: Annotated[
        int | None, typer.Option(help="Verify end to end on at most this many test images.")
    ] = None,
    bench_runs: Annotated[
        int, typer.Option(help="Batch-1 timing runs, fused vs separate sessions (0: skip).")
    ] = 10,
    threads: OrtThreads = None,
    bf16_check: Annotated[
        bool,
        typer.Option(
            help="Run the graph in OpenVINO BF16 on real train/val images (or --check-images) and record whether "
            "it agrees with FP32 (needs openvino and a CPU with BF16); the runtime offers BF16 only after it."
        ),
    ] = True,
    int8_check: Annotated[
        bool,
        typer.Option(
            help="With --variants int8: check the INT8 graph against FP32 on RUN_DIR's test images (top-1 agreement "
            "and each class's operating-point sensitivity) per backend and CPU kind, and record the verdict the "
            "runtime obeys."
        ),
    ] = True,
    check_images: Annotated[
        Path | None,
        typer.Option(help="Folder of real chest X-rays for the BF16 check (default: RUN_DIR's train/val)."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="The BF16 and INT8 bar: top-1 agreement with FP32, as INT8's at export.")
    ] = 0.99,
    heatmaps: Annotated[
        bool,
        typer.Option(
            help="Also build RUN_DIR/ensemble.heatmaps.onnx: the same graph plus class activation maps "
            "(outputs heatmap and class_heatmaps), verified; cxr-predict --heatmap(s) uses it."
        ),
    ] = False,
    ood: Annotated[
        bool,
        typer.Option(
            help="Fit the out-of-distribution score on RUN_DIR's train images (threshold: the 99th percentile of "
            "val) and put it in the graph (output ood_score; the runtime marks images above it not assessable)."
        ),
    ] = True,
    ood_quantile: Annotated[
        float,
        typer.Option(
            help="The out-of-distribution threshold: this quantile of held-out images' scores (cross-fitted "
            "train + val; higher: fewer real images refused, more non-radiographs let through)."
        ),
    ] = 0.97,
) -> None:
    """Fuse members and meta-learner into one verified graph."""
    from cxr.fuse import FuseConfig, describe, run_members
    from cxr.fuse import fuse as fuse_models

    members, meta = run_members(run_dir)
    cfg = FuseConfig(
        out=output or Path(run_dir) / "ensemble.onnx",
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
        input_size=None if input_size is None else (input_size, input_size),
        simplify=simplify,
        run_dir=Path(run_dir) if end_to_end else None,
        e2e_max_images=e2e_limit,
        benchmark_runs=bench_runs,
        threads=threads,
        bf16_check=bf16_check,
        int8_check=int8_check,
        check_images=check_images or Path(run_dir),
        min_agreement=min_agreement,
        heatmaps=heatmaps,
        ood=ood,
        ood_quantile=ood_quantile,
    )
    res = fuse_models(members, meta, cfg)
    typer.echo(describe(res))
    if res.report_md is not None:
        typer.echo(f"report: {res.report_md}")
    typer.echo(NOTICE)
