"""`cxr serve`: the HTTP inference API; every option also reads a `CXR_*` environment variable."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import (
    PRECISION_HELP,
    PrecisionChoice,
    ProviderChoice,
    env_option,
    handle_errors,
    require_extra,
    setup_logging,
)


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
        str, env_option("CXR_HOST", "Address to bind; 0.0.0.0 exposes the API to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, env_option("CXR_PORT", "TCP port (0: any free port).")] = 8000,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port to this file once listening (for --port 0).")
    ] = None,
    provider: Annotated[
        ProviderChoice,
        env_option("CXR_PROVIDER", "onnxruntime provider, or openvino (needs the openvino extra)."),
    ] = ProviderChoice.auto,
    precision: Annotated[PrecisionChoice, env_option("CXR_PRECISION", PRECISION_HELP)] = PrecisionChoice.auto,
    threads: Annotated[
        int | None, env_option("CXR_THREADS", "onnxruntime intra-op threads (default: all cores).")
    ] = None,
    strict_provider: Annotated[
        bool, env_option("CXR_STRICT_PROVIDER", "Fail instead of warning if the provider falls back.")
    ] = False,
    max_batch_size: Annotated[
        int, env_option("CXR_MAX_BATCH_SIZE", "Largest batch; 1 = no batching.", BATCHING)
    ] = 8,
    max_wait_ms: Annotated[
        float, env_option("CXR_MAX_WAIT_MS", "Longest wait to fill a batch.", BATCHING)
    ] = 2.0,
    max_body_bytes: Annotated[
        int, env_option("CXR_MAX_BODY_BYTES", "Request body cap (413 above).", LIMITS)
    ] = 64 * 1024 * 1024,
    max_pixels: Annotated[
        int, env_option("CXR_MAX_PIXELS", "Decoded pixels per image (413).", LIMITS)
    ] = 50_000_000,
    timeout: Annotated[float, env_option("CXR_REQUEST_TIMEOUT", "Request timeout, seconds.", LIMITS)] = 30.0,
    max_concurrency: Annotated[
        int, env_option("CXR_MAX_CONCURRENCY", "Requests processed at once.", LIMITS)
    ] = 16,
    max_queue: Annotated[int, env_option("CXR_MAX_QUEUE", "Requests waiting; more get 503.", LIMITS)] = 64,
    max_batch_files: Annotated[
        int, env_option("CXR_MAX_BATCH_FILES", "Files per batch request.", LIMITS)
    ] = 16,
    decode_workers: Annotated[int, env_option("CXR_DECODE_WORKERS", "Image decoding threads.")] = 2,
    api_key_file: Annotated[
        Path | None,
        env_option("CXR_API_KEY_FILE", "File holding the API key (else $CXR_API_KEY; none: no auth)."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        env_option("CXR_CORS_ORIGINS", "Allowed browser origin (repeatable). CORS is off without it."),
    ] = None,
    access_log: Annotated[bool, env_option("CXR_ACCESS_LOG", "Log every request.")] = True,
    log_level: Annotated[LogLevel, env_option("CXR_LOG_LEVEL")] = LogLevel.info,
    heatmaps: Annotated[
        bool,
        env_option(
            "CXR_HEATMAPS",
            "Also load the model's <stem>.heatmaps.onnx so that POST /v1/predict?heatmap=true returns an "
            "overlay PNG (one extra inference per such request; plain requests are unchanged).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP inference API: POST /v1/predict, /v1/predict/batch; GET /v1/model, /healthz, /readyz,
    /metrics. Decision support only, not a diagnosis."""
    from cxr.runtime.locate import check_model_file

    check_model_file(model)
    setup_logging(log_level == LogLevel.debug)
    require_extra(
        "cxr serve",
        "serve",
        "fastapi",
        "prometheus_client",
        "pydantic_settings",
        "python_multipart",
        "uvicorn",
    )
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
