"""Takes the configured API key; makes the dependencies that guard ``/v1/*`` and ``/metrics`` (constant
time)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cxr.serve.errors import ApiError
from cxr.serve.prometheus import ServeMetrics

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
            metrics.rejected.inc(reason="unauthorized")
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key",
                hint=f"send it as 'Authorization: Bearer KEY' or '{API_KEY_HEADER}: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Depends(require_api_key)]
