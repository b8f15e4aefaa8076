"""`cxr-predict`: classify chest X-rays with a cxr ONNX model, on onnxruntime only (no torch)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxr.cli.common import (
    PRECISION_HELP,
    PrecisionChoice,
    ProviderChoice,
    debug_option,
    handle_errors,
    model_option,
    output_option,
    version,
    warn,
)
from cxr.cli.predict_output import (
    echo_image_results,
    echo_precision,
    echo_ray_summary,
    echo_scan_summary,
    echo_written,
    scan_progress,
    setup_logging,
)
from cxr.cli.predict_setup import open_predictor, predictor_config
from cxr.errors import ConfigError
from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.runtime.results import ResultFormat

MODEL_HELP = (
    "cxr ONNX model (fused ensemble or single member). Default: $CXR_MODEL, else "
    "~/.cache/cxr/ensemble.onnx; the demo's runs/demo/ensemble.onnx (synthetic data) is never picked implicitly."
)

app = typer.Typer(
    rich_markup_mode=None,  # click's layout: descriptions keep their width at 80 columns
    name="cxr-predict",
    help=f"Classify chest X-rays (PNG, JPEG, BMP, TIFF, WebP, DICOM) with a cxr ONNX model on onnxruntime. "
    f"Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly). "
    f"Exit codes: 0 all files predicted, 1 some files failed, 2 usage or model error. {NOTICE}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    callback=debug_option,
)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


ModelOpt = Annotated[Path | None, model_option(MODEL_HELP)]
ProviderOpt = Annotated[
    ProviderChoice,
    typer.Option(
        help="Execution provider: auto = TensorRT > CUDA > CPU (onnxruntime), whichever really works here; "
        "openvino = OpenVINO on the CPU (needs cxr's openvino extra)."
    ),
]
PrecisionOpt = Annotated[PrecisionChoice, typer.Option(help=PRECISION_HELP)]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="CPU threads for inference (default: all cores).")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per inference batch.")]
StrictOpt = Annotated[
    bool, typer.Option(help="Fail (exit 2) instead of warning when the provider falls back to the CPU.")
]
DeviceOpt = Annotated[int, typer.Option(min=0, help="GPU index for CUDA/TensorRT.")]
Fp16Opt = Annotated[bool, typer.Option(help="TensorRT: build FP16 engines.")]
TrtCacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="TensorRT engine cache folder (default $CXR_TRT_CACHE or ~/.cache/cxr/trt).", show_default=False
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Threads that decode images while the model runs (default: 1 on a CPU of < 8 cores, 2 on larger "
        "ones, up to 8 on a GPU).",
        show_default=False,
    ),
]
MaxMbOpt = Annotated[float, typer.Option(min=0.001, help="Refuse files larger than this many MiB.")]
MaxPixelsOpt = Annotated[
    int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).")
]
DicomOutOpt = Annotated[
    Path | None,
    typer.Option(
        help="Write a DICOM SR and a secondary capture (the result burned in) for every DICOM input into "
        "this folder, in the source's study (needs the dicom extra). Other inputs get none.",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details (debug level).")]


@app.command("scan")
@handle_errors
def scan(
    folder: Annotated[
        str,
        typer.Argument(
            help="Folder of chest X-rays (--engine ray: also an object-storage URL such as s3://bucket/xrays; "
            "with --manifest: the data root its paths are relative to).",
            show_default=False,
        ),
    ],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan subfolders.")] = False,
    model: ModelOpt = None,
    provider: ProviderOpt = ProviderChoice.auto,
    precision: PrecisionOpt = PrecisionChoice.auto,
    batch_size: BatchOpt = 8,
    threads: ThreadsOpt = None,
    output: Annotated[
        Path | None,
        output_option(
            "Result file, .csv or .jsonl, written batch by batch. Default: CSV (JSONL with --json) on stdout."
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Only files matching this glob (name or relative path; repeatable). Default: images and DICOM."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip files matching this glob (repeatable).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip files already in --output and append the rest.")] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="With --resume: predict again the files whose row is an error.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    quiet: QuietOpt = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Machine output: a JSON summary (stdout with --output, else stderr)."),
    ] = False,
    strict_provider: StrictOpt = False,
    device_id: DeviceOpt = 0,
    trt_fp16: Fp16Opt = False,
    trt_cache: TrtCacheOpt = None,
    decode_workers: WorkersOpt = None,
    max_file_mb: MaxMbOpt = 256.0,
    max_pixels: MaxPixelsOpt = 100_000_000,
    verbose: VerboseOpt = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process. ray: the same scan as an actor pool of predictors on a Ray cluster "
            "(one onnxruntime session per actor, one GPU each on GPU providers; needs cxr's ray extra)."
        ),
    ] = Engine.local,
    address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster (auto, HOST:6379, ray://HOST:10001). Default: $RAY_ADDRESS, else "
            "a new local Ray instance.",
            show_default=False,
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="--engine ray: scan the files this cxr manifest lists (FOLDER is their data root) instead of "
            "listing FOLDER.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="With --manifest: only this split (train, val, test).", show_default=False),
    ] = None,
    heatmaps: Annotated[
        Path | None,
        typer.Option(
            help="Also write an overlay PNG per image into this folder (where the ensemble looked; runs the "
            "model's <stem>.heatmaps.onnx, built by `cxr fuse --heatmaps`; local engine only).",
            show_default=False,
        ),
    ] = None,
    dicom_out: DicomOutOpt = None,
) -> None:
    """Classify every image in FOLDER, one result row per file.

    A file that cannot be read gets its error.

    Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly).
    Exit codes: 0 every file predicted, 1 some files failed, 2 usage or model error.
    """
    setup_logging(verbose)
    if resume and output is None:
        raise ConfigError("--resume needs --output (the file to resume)", hint="add --output results.csv")
    if retry_failed and not resume:
        raise ConfigError("--retry-failed goes with --resume", hint="add --resume --output FILE")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", hint="pass one of them")
    if engine is Engine.ray and (
        given := _given(retry_failed=retry_failed, heatmaps=heatmaps, dicom_out=dicom_out)
    ):
        raise ConfigError(f"{given} runs with the local engine only", hint=f"drop --engine ray or {given}")
    if engine is Engine.local and (given := _given(address=address, manifest=manifest, split=split)):
        raise ConfigError(f"{given} needs --engine ray", hint="add --engine ray, or drop the option")
    cfg = predictor_config(
        provider, precision, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache,
        decode_workers, max_file_mb, max_pixels,
    )  # fmt: skip
    include_t, exclude_t = tuple(include or ()), tuple(exclude or ())
    stream_format: ResultFormat = "jsonl" if json_out else "csv"
    if engine is Engine.ray:
        from cxr.runtime.locate import resolve_model
        from cxr.runtime.ray.scan import RayScanConfig, ray_scan

        if device_id:
            warn("warning: --device-id is ignored with --engine ray (Ray gives each actor its GPU)")
        ray_cfg = RayScanConfig(
            model=resolve_model(model),
            source=folder,
            predictor=cfg,
            manifest=manifest,
            split=split,
            address=address,
            ray_logs=verbose,
            recursive=recursive,
            include=include_t,
            exclude=exclude_t,
            output=output,
            stream_format=stream_format,
            resume=resume,
            overwrite=overwrite,
        )
        run: Callable[..., Any] = partial(ray_scan, ray_cfg)
    else:
        from cxr.runtime.scan import ScanConfig, scan_folder

        opened = open_predictor(model, cfg, heatmaps, dicom_out, Path(folder))
        echo_precision(opened.predictor)
        local_cfg = ScanConfig(
            folder=Path(folder),
            recursive=recursive,
            include=include_t,
            exclude=exclude_t,
            output=output,
            stream_format=stream_format,
            resume=resume,
            overwrite=overwrite,
            retry_failed=retry_failed,
        )
        run = partial(scan_folder, opened.predictor, local_cfg)
    with scan_progress(output, quiet or json_out) as hooks:
        result = run(stream=hooks.stream, on_start=hooks.on_start, on_batch=hooks.on_batch)
    if engine is Engine.ray:
        echo_ray_summary(result, output=output, json_out=json_out, quiet=quiet)
    else:
        echo_scan_summary(result, opened.predictor.describe(), output=output, json_out=json_out, quiet=quiet)
        echo_written(opened)
    raise typer.Exit(code=result.exit_code)


def _given(**options: object) -> str | None:
    """The first of ``options`` that was given, spelt as its flag."""
    return next((f"--{k.replace('_', '-')}" for k, v in options.items() if v), None)


@app.command("image")
@handle_errors
def image(
    files: Annotated[list[Path], typer.Argument(help="Image or DICOM files.", show_default=False)],
    model: ModelOpt = None,
    provider: ProviderOpt = ProviderChoice.auto,
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = 8,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="One line per file: class, and NOT ASSESSABLE with why.")
    ] = False,
    strict_provider: StrictOpt = False,
    device_id: DeviceOpt = 0,
    trt_fp16: Fp16Opt = False,
    trt_cache: TrtCacheOpt = None,
    max_file_mb: MaxMbOpt = 256.0,
    max_pixels: MaxPixelsOpt = 100_000_000,
    verbose: VerboseOpt = False,
    heatmap: Annotated[
        bool,
        typer.Option(
            help="Also write an overlay PNG per file (where the ensemble looked; needs the model's "
            "<stem>.heatmaps.onnx beside it, built by `cxr fuse --heatmaps`)."
        ),
    ] = False,
    heatmap_dir: Annotated[Path, typer.Option(help="Folder for the --heatmap overlays.")] = Path("."),
    dicom_out: DicomOutOpt = None,
) -> None:
    """Classify the given files and print each result.

    Each result: class, probability, every class probability; NOT ASSESSABLE and why.

    Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly).
    Exit codes: 0 every file predicted, 1 some files failed, 2 usage or model error.
    """
    setup_logging(verbose)
    cfg = predictor_config(
        provider, precision, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache,
        None, max_file_mb, max_pixels,
    )  # fmt: skip
    opened = open_predictor(model, cfg, heatmap_dir if heatmap else None, dicom_out)
    echo_precision(opened.predictor)
    preds = opened.predictor.predict([str(f) for f in files])
    echo_image_results(opened.predictor, preds, json_out=json_out, quiet=quiet)
    echo_written(opened)
    raise typer.Exit(code=1 if any(not p.ok for p in preds) else 0)


app.command("version")(version)


def main() -> None:  # pragma: no cover - console-script convenience
    app(prog_name="cxr-predict")


if __name__ == "__main__":  # pragma: no cover
    main()
