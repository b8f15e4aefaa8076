"""`cxr serve`: the HTTP inference API; every option also reads a `CXR_*` environment variable."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import PRECISION_HELP, PrecisionChoice, ProviderChoice, handle_errors, setup_logging
from cxr.errors import ConfigError


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


LIMITS = "Limits"
BATCHING = "Dynamic batching"


@handle_errors
def serve(
    model: Annotated[
        Path,
        typer.Option(
            "--model", "-m", envvar="CXR_MODEL", help="The cxr ONNX model (fused ensemble or member)."
        ),
    ],
    host: Annotated[
        str, typer.Option(envvar="CXR_HOST", help="Address to bind; 0.0.0.0 exposes the API to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CXR_PORT", help="TCP port (0: any free port).")] = 8000,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port to this file once listening (for --port 0).")
    ] = None,
    provider: Annotated[
        ProviderChoice,
        typer.Option(
            envvar="CXR_PROVIDER", help="onnxruntime provider, or openvino (needs the openvino extra)."
        ),
    ] = ProviderChoice.auto,
    precision: Annotated[
        PrecisionChoice, typer.Option(envvar="CXR_PRECISION", help=PRECISION_HELP)
    ] = PrecisionChoice.auto,
    threads: Annotated[
        int | None,
        typer.Option(envvar="CXR_THREADS", help="onnxruntime intra-op threads (default: all cores)."),
    ] = None,
    strict_provider: Annotated[
        bool,
        typer.Option(
            envvar="CXR_STRICT_PROVIDER", help="Fail instead of warning if the provider falls back."
        ),
    ] = False,
    max_batch_size: Annotated[
        int,
        typer.Option(
            envvar="CXR_MAX_BATCH_SIZE", rich_help_panel=BATCHING, help="Largest batch; 1 = no batching."
        ),
    ] = 8,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            envvar="CXR_MAX_WAIT_MS", rich_help_panel=BATCHING, help="Longest wait to fill a batch."
        ),
    ] = 2.0,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            envvar="CXR_MAX_BODY_BYTES", rich_help_panel=LIMITS, help="Request body cap (413 above)."
        ),
    ] = 64 * 1024 * 1024,
    max_pixels: Annotated[
        int,
        typer.Option(envvar="CXR_MAX_PIXELS", rich_help_panel=LIMITS, help="Decoded pixels per image (413)."),
    ] = 50_000_000,
    timeout: Annotated[
        float,
        typer.Option(envvar="CXR_REQUEST_TIMEOUT", rich_help_panel=LIMITS, help="Request timeout, seconds."),
    ] = 30.0,
    max_concurrency: Annotated[
        int,
        typer.Option(
            envvar="CXR_MAX_CONCURRENCY", rich_help_panel=LIMITS, help="Requests processed at once."
        ),
    ] = 16,
    max_queue: Annotated[
        int,
        typer.Option(envvar="CXR_MAX_QUEUE", rich_help_panel=LIMITS, help="Requests waiting; more get 503."),
    ] = 64,
    max_batch_files: Annotated[
        int,
        typer.Option(envvar="CXR_MAX_BATCH_FILES", rich_help_panel=LIMITS, help="Files per batch request."),
    ] = 16,
    decode_workers: Annotated[
        int, typer.Option(envvar="CXR_DECODE_WORKERS", help="Image decoding threads.")
    ] = 2,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="CXR_API_KEY_FILE", help="File holding the API key (else $CXR_API_KEY; none: no auth)."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CXR_CORS_ORIGINS", help="Allowed browser origin (repeatable). CORS is off without it."
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(envvar="CXR_ACCESS_LOG", help="Log every request.")] = True,
    log_level: Annotated[LogLevel, typer.Option(envvar="CXR_LOG_LEVEL")] = LogLevel.info,
    heatmaps: Annotated[
        bool,
        typer.Option(
            envvar="CXR_HEATMAPS",
            help="Also load the model's <stem>.heatmaps.onnx so that POST /v1/predict?heatmap=true returns an "
            "overlay PNG (one extra inference per such request; plain requests are unchanged).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP inference API: POST /v1/predict, /v1/predict/batch; GET /v1/model, /healthz, /readyz,
    /metrics. Decision support only, not a diagnosis."""
    _require_model(model)
    setup_logging(log_level == LogLevel.debug)
    _require_serve_extra()
    from cxr.serve.config import ServeConfig
    from cxr.serve.server import run_server

    # the session's fields (cxr.session.SessionConfig), checked by ServeConfig like every other setting
    session = {
        "provider": provider.value,
        "precision": precision.value,
        "threads": threads,
        "strict_provider": strict_provider,
    }
    cfg = ServeConfig(  # the API key itself comes from $CXR_API_KEY, read by ServeConfig
        model=model,
        host=host,
        port=port,
        session=session,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body_bytes,
        max_pixels=max_pixels,
        request_timeout_s=timeout,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_batch_files=max_batch_files,
        decode_workers=decode_workers,
        api_key_file=api_key_file,
        cors_origins=tuple(o for origin in cors_origin or () for o in origin.split(",") if o.strip()),
        access_log=access_log,
        log_level=log_level.value,
        heatmaps=heatmaps,
    )
    run_server(cfg, port_file=port_file)


def _require_model(model: Path) -> None:
    from cxr.runtime.locate import check_model_file

    check_model_file(model)


def _require_serve_extra() -> None:
    """The serve extra is optional: fail here, with the fix, when it is missing."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import pydantic_settings  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"`cxr serve` needs the serve extra ({e.name or e} is missing)",
            hint="pip install -e '.[serve]' in a clone of cxr",
        ) from e
