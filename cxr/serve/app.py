"""Takes a ``ServeConfig`` (none: the ``CXR_*`` environment); makes the FastAPI app, its handlers and
middleware."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxr import __version__
from cxr.labels import NOTICE
from cxr.serve.config import ServeConfig
from cxr.serve.errors import STATUS_CODES, ApiError, error_body
from cxr.serve.limits import BodyLimitMiddleware, BodyTooLarge, too_large_body
from cxr.serve.prometheus import MetricsMiddleware, ServeMetrics
from cxr.serve.routes import api, probes
from cxr.serve.state import Loader, ServerState

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_matches(given: str | None, expected_digest: bytes) -> bool:
    """Constant-time comparison of ``given`` against the digest of the configured key."""
    return given is not None and hmac.compare_digest(_digest(given), expected_digest)


def auth_dependencies(api_key: str | None, metrics: ServeMetrics) -> list[Any]:
    """``dependencies=`` for the protected routes (empty when authentication is off)."""
    if api_key is None:
        return []
    expected = _digest(api_key)
    header_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The server's API key.")
    bearer_scheme = HTTPBearer(auto_error=False, description="The server's API key as a bearer token.")

    async def require_api_key(
        header_key: str | None = Security(header_scheme),
        bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
    ) -> None:
        given = header_key if header_key is not None else (bearer.credentials if bearer else None)
        if not key_matches(given, expected):
            metrics.rejected.labels(reason="unauthorized").inc()
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key",
                hint=f"send it as 'Authorization: Bearer KEY' or '{API_KEY_HEADER}: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Depends(require_api_key)]


def _install_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
        ]
        message = "invalid request: " + ("; ".join(parts) or "validation failed")
        return JSONResponse(error_body("validation_error", message[:1000]), status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        state.metrics.rejected.labels(reason="body_too_large").inc()
        return JSONResponse(too_large_body(exc.limit), status_code=413, headers={"Connection": "close"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal", "internal server error"), status_code=500)


def create_app(config: ServeConfig | None = None, *, loader: Loader | None = None) -> FastAPI:
    """Build the app; the model is loaded by the lifespan (in the background, see ``/readyz``).

    Without ``config`` the settings come from the ``CXR_*`` environment variables, as in ``cxr serve``
    (so ``uvicorn --factory cxr.serve:create_app`` serves the same API).
    """
    config = config if config is not None else ServeConfig()
    state = ServerState(config, loader)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="cxr chest X-ray classifier API",
        version=__version__,
        description=f"{NOTICE} One ONNX model (a fused stacking ensemble or a single member), served with "
        "onnxruntime and dynamic batching.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.cxr = state
    app.include_router(api, dependencies=auth_dependencies(config.api_key, state.metrics))
    app.include_router(probes)
    _install_handlers(app, state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=config.max_body_bytes,
        on_reject=lambda: state.metrics.rejected.labels(reason="body_too_large").inc(),
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
