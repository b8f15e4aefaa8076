"""`cxr stack`, `cxr fuse`, `cxr evaluate`, `cxr evaluate-folds` and `cxr train probe`: the meta-learner, the
fused graph, the study's answer (one split, or cross-validation folds pooled) and its linear-probe floor.

Thin commands over ``cxr.stack.stack.fit_meta``, ``cxr.fuse.fuse.fuse``, ``cxr.evaluate.evaluate.evaluate``
and ``cxr.train.probe.linear_probe``; heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import (
    OldOut,
    OrtThreads,
    handle_errors,
    member_names,
    members_option,
    output_option,
    renamed,
    run_dir_argument,
)
from cxr.labels import NOTICE


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
    """Train the meta-learner on predictions for images the base models never trained on."""
    from cxr.stack.stack import MetaConfig, fit_meta

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
    typer.echo(f"meta-learner {res.estimator} {json.dumps(res.params)} on {res.n_train} {source} images")
    typer.echo(f"  members (feature order): {', '.join(res.members)}")
    cv = res.cv_metrics
    typer.echo(
        f"  cross-validated: log loss {cv['log_loss']:.4f}, accuracy {cv['accuracy']:.1%}, "
        f"macro-F1 {'undefined' if cv['macro_f1'] is None else format(cv['macro_f1'], '.1%')}"
    )
    typer.echo(f"  ONNX: {res.onnx_path} (max |p - predict_proba| = {res.onnx_max_abs_diff:.2g})")
    info = json.loads(res.meta_json.read_text(encoding="utf-8"))
    cal = info.get("calibration") or {}
    if cal.get("method") == "temperature":
        typer.echo(
            f"  calibration: temperature {cal['temperature']:.3f} (validation NLL {cal['nll_before']:.4f} -> "
            f"{cal['nll_after']:.4f}, fitted on the same cross-validated predictions)"
        )
    for name, op in (info.get("operating_points") or {}).items():
        typer.echo(
            f"  operating point {name}: p >= {op['threshold']:.4f} for sensitivity {op['target_sensitivity']:.0%} "
            f"(validation: {op['val_sensitivity']:.1%}, specificity "
            f"{'n/a' if op['val_specificity'] is None else format(op['val_specificity'], '.1%')})"
        )
    typer.echo(f"  wrote {res.meta_json} and {res.estimator_path}")
    for w in res.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)


@handle_errors
def fuse(
    run_dir: Annotated[Path, run_dir_argument("Run directory with onnx/<name>.onnx and stack/meta.onnx.")],
    variants: Annotated[
        str, typer.Option(help="Also build variants from the members' variants, e.g. fp16,int8.")
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
    check_images: Annotated[
        Path | None,
        typer.Option(help="Folder of real chest X-rays for the BF16 check (default: RUN_DIR's train/val)."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="The BF16 bar: top-1 agreement with FP32, as INT8's at export.")
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
            help="The out-of-distribution threshold: this quantile of the val images' scores (higher: fewer real "
            "images refused, more photographs and other non-radiographs let through)."
        ),
    ] = 0.99,
    out: OldOut = None,
) -> None:
    """Fuse the members and the meta-learner into one verified ONNX graph."""
    from cxr.fuse.fuse import FuseConfig, describe, run_members
    from cxr.fuse.fuse import fuse as fuse_models

    output = renamed(output, out, old="--out", new="--output")
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


@handle_errors
def evaluate(
    run_dir: Annotated[Path, run_dir_argument("Run directory with member predictions and stack/.")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write confusion-matrix and reliability PNGs.")] = True,
    output: Annotated[Path | None, output_option("The report folder (default: RUN_DIR/eval).")] = None,
    out: OldOut = None,
) -> None:
    """Compare each member, soft voting, majority voting and stacking on the test split."""
    from cxr.evaluate.evaluate import EvalConfig
    from cxr.evaluate.evaluate import evaluate as run_evaluation

    output = renamed(output, out, old="--out", new="--output")
    res = run_evaluation(
        EvalConfig(run_dir=run_dir, out_dir=output, n_bootstrap=bootstrap, seed=seed, plots=plots)
    )
    typer.echo(f"test split: {res.n} images; best single member (validation): {res.best_member}")
    typer.echo(res.table)
    typer.echo("")
    typer.echo(res.verdict)
    for w in res.warnings:
        typer.secho(f"note: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"report: {res.report_md} (+ {res.report_json.name}, {len(res.figures)} figures)")
    typer.echo(NOTICE)


@handle_errors
def probe(
    run_dir: Annotated[Path, run_dir_argument("Run directory with manifest.csv.")],
    pretrained: Annotated[
        str, typer.Option(help="ImageNet weights: a weights file or folder, or 'true' for timm's download.")
    ] = "true",
    backbone: Annotated[
        str, typer.Option(help="Frozen backbone (a cxr member name or timm model).")
    ] = "xception",
    input_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores).")] = None,
) -> None:
    """The linear probe baseline: logistic regression on a frozen ImageNet backbone's pooled features."""
    from cxr.train.probe import ProbeConfig, linear_probe

    weights: bool | Path = True if pretrained.lower() == "true" else Path(pretrained)
    res = linear_probe(
        ProbeConfig(
            run_dir=run_dir, backbone=backbone, pretrained=weights, input_size=input_size, threads=threads
        )
    )
    t = res.test_metrics
    macro = "undefined" if t["macro_f1"] is None else format(t["macro_f1"], ".1%")
    typer.echo(
        f"linear probe ({backbone}, frozen, {input_size} px, C={res.c:g}, {res.n_train} training images, "
        f"{res.seconds:.0f} s): test accuracy {t['accuracy']:.1%}, macro-F1 {macro} on {t['n']} images"
    )
    typer.echo(f"wrote {res.out_dir} (`cxr evaluate` adds it to the comparison as a baseline)")
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
    """Pool the test splits of `cxr data split --folds K` runs: every method on every image, with McNemar."""
    from cxr.evaluate.pooled import PoolConfig, pool_folds
    from cxr.evaluate.pooled_report import format_pooled_table, mcnemar_line

    res = pool_folds(PoolConfig(tuple(run_dirs), output, n_bootstrap=bootstrap, seed=seed))
    typer.echo(f"{len(res.folds)} folds, {res.n} test images pooled")
    typer.echo(format_pooled_table(res.methods))
    typer.echo("")
    for t in res.tests.values():
        typer.echo(mcnemar_line(t))
    if res.member_tests:
        typer.echo("each member alone vs the baseline (descriptive, no multiplicity correction):")
    for t in res.member_tests.values():
        typer.echo(f"  {mcnemar_line(t)}")
    for w in res.warnings:
        typer.secho(f"note: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"report: {res.report_md} (+ {res.report_json.name})")
    typer.echo(NOTICE)
