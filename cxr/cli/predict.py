"""`cxr-predict`: classify chest X-rays with a cxr ONNX model, on onnxruntime only (no torch).

`cxr-predict scan FOLDER` writes one row per file (CSV or JSONL, flushed per batch, `--resume` skips the
files already written) and ends with a summary; `--engine ray` runs the same scan on a Ray cluster
(`cxr.runtime.ray.scan`, optional extra `ray`); `cxr-predict image FILE...` prints each file's result.
Exit codes: 0 every file predicted, 1 some files could not be read, 2 usage or model error.
Decision support only: every human-readable result carries ``cxr.labels.NOTICE``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from cxr.cli.common import ProviderChoice, handle_errors
from cxr.errors import ConfigError
from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.progress import Progress
    from cxr.runtime.predictor import Predictor, PredictorConfig
    from cxr.runtime.scan import ScanResult
    from cxr.runtime.types import Prediction

MODEL_HELP = (
    "cxr ONNX model (fused ensemble or single member). Default: $CXR_MODEL, else "
    "~/.cache/cxr/ensemble.onnx; the demo's runs/demo/ensemble.onnx (synthetic data) is never picked implicitly."
)

app = typer.Typer(
    name="cxr-predict",
    help=f"Classify chest X-rays (PNG, JPEG, BMP, TIFF, WebP, DICOM) with a cxr ONNX model on onnxruntime. "
    f"Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly). "
    f"Exit codes: 0 all files predicted, 1 some files failed, 2 usage or model error. {NOTICE}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP, show_default=False)]
ProviderOpt = Annotated[
    ProviderChoice,
    typer.Option(help="Execution provider: auto = TensorRT > CUDA > CPU, whichever really works here."),
]
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
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details (debug level).")]


class _EchoHandler(logging.Handler):
    """Log records as ``warning: ...`` lines on the current stderr (works under CliRunner too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("cxr")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _predictor_config(
    provider: ProviderChoice,
    threads: int | None,
    batch_size: int,
    strict_provider: bool,
    device_id: int,
    trt_fp16: bool,
    trt_cache: Path | None,
    decode_workers: int | None,
    max_file_mb: float,
    max_pixels: int,
) -> PredictorConfig:
    from cxr.imaging.decode import DecodeLimits
    from cxr.runtime.predictor import PredictorConfig, auto_decode_workers
    from cxr.session import SessionConfig

    return PredictorConfig(
        session=SessionConfig(
            provider=provider.value,
            threads=threads,
            device_id=device_id,
            strict_provider=strict_provider,
            trt_fp16=trt_fp16,
            trt_cache_dir=trt_cache,
        ),
        limits=DecodeLimits(max_bytes=int(max_file_mb * 1024 * 1024), max_pixels=max_pixels),
        batch_size=batch_size,
        decode_workers=decode_workers or auto_decode_workers(provider.value),
    )


def _open_predictor(
    model: Path | None,
    provider: ProviderChoice,
    threads: int | None,
    batch_size: int,
    strict_provider: bool,
    device_id: int,
    trt_fp16: bool,
    trt_cache: Path | None,
    decode_workers: int | None,
    max_file_mb: float,
    max_pixels: int,
) -> Predictor:
    from cxr.runtime.locate import resolve_model
    from cxr.runtime.predictor import Predictor

    cfg = _predictor_config(
        provider, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache, decode_workers,
        max_file_mb, max_pixels,
    )  # fmt: skip
    return Predictor.from_path(resolve_model(model), cfg)


@dataclass
class _ScanHooks:
    """Where a scan streams its rows, and the progress bar it drives (created once the work is known)."""

    stream: TextIO
    show_bar: bool
    bar: Progress | None = None

    def on_start(self, todo: int, skipped: int) -> None:
        from cxr.progress import Progress

        stderr = typer.get_text_stream("stderr") if todo > 0 and self.show_bar else None
        self.bar = Progress(todo, "scan", stderr, log_interval=10.0)

    def on_batch(self, preds: Any) -> None:
        if self.bar is not None:
            self.bar.update(len(preds))


@contextmanager
def _scan_progress(output: Path | None, silent: bool) -> Iterator[_ScanHooks]:
    """Rows go to stdout unless ``output``; no bar when ``silent`` or when the rows fill the terminal."""
    stdout = typer.get_text_stream("stdout")
    hooks = _ScanHooks(stdout, show_bar=not silent and not (output is None and stdout.isatty()))
    try:
        yield hooks
    finally:
        if hooks.bar is not None:
            hooks.bar.close()


def _echo_warnings(predictor: Predictor) -> None:
    """What trained the model (synthetic data, random weights, no provenance), plainly, on stderr."""
    for w in predictor.describe()["provenance_warnings"]:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)


def _summary_text(result: ScanResult, classes: tuple[str, ...], warnings: Sequence[str] = ()) -> str:
    width = max(len(c) for c in (*classes, "failed", "total"))
    lines = ["", f"{'class':<{width}}  files"]
    lines += [f"{c:<{width}}  {result.counts.get(c, 0):>5}" for c in classes]
    lines.append(f"{'failed':<{width}}  {result.failed:>5}")
    lines.append(f"{'total':<{width}}  {result.predicted + result.failed:>5}")
    if result.skipped:
        lines.append(f"skipped {result.skipped} files already in {result.output} (--resume)")
    lines.append(
        f"{result.images_per_second:.1f} images/s in {result.seconds:.1f} s on provider '{result.provider}', "
        f"model {result.model_id}"
    )
    if result.output:
        lines.append(f"results: {result.output}")
    for path, err in result.failures[:5]:
        lines.append(f"failed: {err if err.startswith(path) else f'{path}: {err}'}")
    if result.failed > 5:
        lines.append(f"... and {result.failed - 5} more failures (see the error column)")
    lines += [f"warning: {w}" for w in warnings]
    lines.append(NOTICE)
    return "\n".join(lines)


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
    batch_size: BatchOpt = 8,
    threads: ThreadsOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Result file, .csv or .jsonl, written batch by batch. Default: CSV (JSONL with --json) on stdout.",
            show_default=False,
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
            "(one onnxruntime session per actor, one GPU each on GPU providers; needs "
            "`pip install 'cxr-toolkit\\[ray]'`)."
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
) -> None:
    """Classify every image in FOLDER; one result row per file (a file that cannot be read gets its error).

    Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly).
    Exit codes: 0 every file predicted, 1 some files failed, 2 usage or model error.
    """
    from cxr.runtime.scan import ScanConfig, scan_folder

    _setup_logging(verbose)
    if resume and output is None:
        raise ConfigError("--resume needs --output (the file to resume)", hint="add --output results.csv")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", hint="pass one of them")
    if engine is Engine.local and (address or manifest or split):
        given = "--address" if address else "--manifest" if manifest else "--split"
        raise ConfigError(f"{given} needs --engine ray", hint="add --engine ray, or drop the option")
    if engine is Engine.ray:
        cfg_p = _predictor_config(
            provider, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache, decode_workers,
            max_file_mb, max_pixels,
        )  # fmt: skip
        code = _scan_with_ray(
            folder, model, cfg_p, recursive, include, exclude, output, json_out, resume, overwrite, quiet,
            address, manifest, split, verbose,
        )  # fmt: skip
        raise typer.Exit(code=code)
    predictor = _open_predictor(
        model, provider, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache, decode_workers,
        max_file_mb, max_pixels,
    )  # fmt: skip
    cfg = ScanConfig(
        folder=Path(folder),
        recursive=recursive,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        output=output,
        stream_format="jsonl" if json_out else "csv",
        resume=resume,
        overwrite=overwrite,
    )
    with _scan_progress(output, quiet or json_out) as hooks:
        result = scan_folder(
            predictor, cfg, stream=hooks.stream, on_start=hooks.on_start, on_batch=hooks.on_batch
        )
    if json_out:
        summary = {**result.to_dict(), "model": predictor.describe(), "notice": NOTICE}
        typer.echo(json.dumps(summary), err=output is None)
    elif not quiet:
        typer.echo(
            _summary_text(result, predictor.classes, predictor.describe()["provenance_warnings"]), err=True
        )
    raise typer.Exit(code=result.exit_code)


def _scan_with_ray(
    folder: str,
    model: Path | None,
    predictor_cfg: PredictorConfig,
    recursive: bool,
    include: list[str] | None,
    exclude: list[str] | None,
    output: Path | None,
    json_out: bool,
    resume: bool,
    overwrite: bool,
    quiet: bool,
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
        model=resolve_model(model),
        source=folder,
        predictor=predictor_cfg,
        recursive=recursive,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        manifest=manifest,
        split=split,
        output=output,
        stream_format="jsonl" if json_out else "csv",
        resume=resume,
        overwrite=overwrite,
        address=address,
        ray_logs=verbose,
    )
    with _scan_progress(output, quiet or json_out) as hooks:
        result = ray_scan(cfg, stream=hooks.stream, on_start=hooks.on_start, on_batch=hooks.on_batch)
    if json_out:
        summary = {**result.to_dict(), "model": result.model, "notice": NOTICE}
        typer.echo(json.dumps(summary), err=output is None)
    elif not quiet:
        gpus = f", {result.gpus_per_actor:g} GPU" if result.gpus_per_actor else ""
        typer.echo(
            f"ray: {result.actors} actors ({result.cpus_per_actor:g} CPU{gpus} each) on {result.nodes} node(s) "
            f"at {result.address}, {result.read} reads; first rows after {result.first_rows_seconds:.1f} s",
            err=True,
        )
        typer.echo(
            _summary_text(
                result.scan, tuple(result.model["classes"]), result.model.get("provenance_warnings", ())
            ),
            err=True,
        )
    return result.exit_code


def _format_prediction(p: Prediction) -> str:
    if not p.ok:
        return f"{p.source}\n  error: {p.error}"
    probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
    lines = [p.source, f"  predicted: {p.label} ({p.confidence:.3f})", f"  probabilities: {probs}"]
    for member, mp in (p.member_probabilities or {}).items():
        top = max(mp, key=lambda c: mp[c])
        lines.append(f"  member {member}: {top} ({mp[top]:.3f})")
    return "\n".join(lines)


@app.command("image")
@handle_errors
def image(
    files: Annotated[list[Path], typer.Argument(help="Image or DICOM files.", show_default=False)],
    model: ModelOpt = None,
    provider: ProviderOpt = ProviderChoice.auto,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = 8,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the predicted class per file.")] = False,
    strict_provider: StrictOpt = False,
    device_id: DeviceOpt = 0,
    trt_fp16: Fp16Opt = False,
    trt_cache: TrtCacheOpt = None,
    max_file_mb: MaxMbOpt = 256.0,
    max_pixels: MaxPixelsOpt = 100_000_000,
    verbose: VerboseOpt = False,
) -> None:
    """Classify the given files and print each result (class, confidence, every class probability).

    Model: --model, else $CXR_MODEL, else ~/.cache/cxr/ensemble.onnx (never the demo model implicitly).
    Exit codes: 0 every file predicted, 1 some files failed, 2 usage or model error.
    """
    from cxr.runtime.results import json_record

    _setup_logging(verbose)
    predictor = _open_predictor(
        model, provider, threads, batch_size, strict_provider, device_id, trt_fp16, trt_cache, None,
        max_file_mb, max_pixels,
    )  # fmt: skip
    preds = predictor.predict([str(f) for f in files])
    failed = sum(not p.ok for p in preds)
    if json_out:
        doc = {
            "model": predictor.describe(),
            "predictions": [json_record(p, predictor.model_id) for p in preds],
            "failed": failed,
            "notice": NOTICE,
        }
        typer.echo(json.dumps(doc, indent=2))
    elif quiet:
        for p in preds:
            typer.echo(f"{p.source}\t{p.label if p.ok else 'ERROR'}")
        _echo_warnings(predictor)
        typer.echo(NOTICE, err=True)
    else:
        for p in preds:
            typer.echo(_format_prediction(p))
        typer.echo(
            f"provider '{predictor.provider}', model {predictor.model_id} ({predictor.model_path.name})"
        )
        _echo_warnings(predictor)
        typer.echo(NOTICE)
    raise typer.Exit(code=1 if failed else 0)


@app.command("version")
def version() -> None:
    """Print the cxr version."""
    from cxr import __version__

    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console-script convenience
    app(prog_name="cxr-predict")


if __name__ == "__main__":  # pragma: no cover
    main()
