"""`cxr-predict`: classify chest X-rays with a cxr ONNX model, on onnxruntime only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
)
from cxr.cli.predict_output import (
    echo_image_results,
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
    from cxr.runtime.predictor import PredictorConfig
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


@dataclass(frozen=True)
class _ScanJob:
    """What to scan and where the rows go: the options a local and a Ray scan share."""

    folder: str
    model: Path | None
    recursive: bool
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    output: Path | None
    json_out: bool
    resume: bool
    overwrite: bool
    quiet: bool
    heatmaps: Path | None = None
    retry_failed: bool = False
    dicom_out: Path | None = None

    @property
    def stream_format(self) -> ResultFormat:
        return "jsonl" if self.json_out else "csv"


def _check_scan_options(
    job: _ScanJob, engine: Engine, address: str | None, manifest: Path | None, split: str | None
) -> None:
    if job.resume and job.output is None:
        raise ConfigError("--resume needs --output (the file to resume)", hint="add --output results.csv")
    if job.retry_failed and not job.resume:
        raise ConfigError("--retry-failed goes with --resume", hint="add --resume --output FILE")
    if job.retry_failed and engine is Engine.ray:
        raise ConfigError("--retry-failed runs with the local engine only", hint="drop --engine ray")
    if job.resume and job.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", hint="pass one of them")
    if engine is Engine.ray and (job.heatmaps is not None or job.dicom_out is not None):
        given = "--heatmaps" if job.heatmaps is not None else "--dicom-out"
        raise ConfigError(f"{given} runs with the local engine only", hint=f"drop --engine ray or {given}")
    if engine is Engine.local and (address or manifest or split):
        given = "--address" if address else "--manifest" if manifest else "--split"
        raise ConfigError(f"{given} needs --engine ray", hint="add --engine ray, or drop the option")


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
    job = _ScanJob(
        folder, model, recursive, tuple(include or ()), tuple(exclude or ()), output, json_out, resume,
        overwrite, quiet, heatmaps, retry_failed, dicom_out,
    )  # fmt: skip
    _check_scan_options(job, engine, address, manifest, split)
    cfg = predictor_config(
        provider, precision, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache,
        decode_workers, max_file_mb, max_pixels,
    )  # fmt: skip
    if engine is Engine.ray:
        raise typer.Exit(code=_scan_with_ray(job, cfg, address, manifest, split, verbose))
    raise typer.Exit(code=_scan_local(job, cfg))


def _scan_local(job: _ScanJob, predictor_cfg: PredictorConfig) -> int:
    """`scan` in this process (cxr.runtime.scan); returns the exit code."""
    from cxr.runtime.scan import ScanConfig, scan_folder

    opened = open_predictor(job.model, predictor_cfg, job.heatmaps, job.dicom_out, Path(job.folder))
    predictor = opened.predictor
    cfg = ScanConfig(
        folder=Path(job.folder),
        recursive=job.recursive,
        include=job.include,
        exclude=job.exclude,
        output=job.output,
        stream_format=job.stream_format,
        resume=job.resume,
        overwrite=job.overwrite,
        retry_failed=job.retry_failed,
    )
    with scan_progress(job.output, job.quiet or job.json_out) as hooks:
        result = scan_folder(
            predictor, cfg, stream=hooks.stream, on_start=hooks.on_start, on_batch=hooks.on_batch
        )
    echo_scan_summary(result, predictor.describe(), output=job.output, json_out=job.json_out, quiet=job.quiet)
    echo_written(opened)
    return result.exit_code


def _scan_with_ray(
    job: _ScanJob,
    predictor_cfg: PredictorConfig,
    address: str | None,
    manifest: Path | None,
    split: str | None,
    verbose: bool,
) -> int:
    """`scan --engine ray`: the local scan's rows and summary (cxr.runtime.ray.scan); returns the exit code."""
    from cxr.runtime.locate import resolve_model
    from cxr.runtime.ray.scan import RayScanConfig, ray_scan

    if predictor_cfg.session.device_id:
        typer.echo(
            "warning: --device-id is ignored with --engine ray (Ray gives each actor its GPU)", err=True
        )
    cfg = RayScanConfig(
        model=resolve_model(job.model),
        source=job.folder,
        predictor=predictor_cfg,
        recursive=job.recursive,
        include=job.include,
        exclude=job.exclude,
        manifest=manifest,
        split=split,
        output=job.output,
        stream_format=job.stream_format,
        resume=job.resume,
        overwrite=job.overwrite,
        address=address,
        ray_logs=verbose,
    )
    with scan_progress(job.output, job.quiet or job.json_out) as hooks:
        result = ray_scan(cfg, stream=hooks.stream, on_start=hooks.on_start, on_batch=hooks.on_batch)
    echo_ray_summary(result, output=job.output, json_out=job.json_out, quiet=job.quiet)
    return result.exit_code


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
    preds = opened.predictor.predict([str(f) for f in files])
    echo_image_results(opened.predictor, preds, json_out=json_out, quiet=quiet)
    echo_written(opened)
    raise typer.Exit(code=1 if any(not p.ok for p in preds) else 0)


app.command("version")(version)


def main() -> None:  # pragma: no cover - console-script convenience
    app(prog_name="cxr-predict")


if __name__ == "__main__":  # pragma: no cover
    main()
