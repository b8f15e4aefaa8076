"""Takes what went wrong in a request; makes ``ApiError`` and the ``{"error": {code, message, hint}}``
body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """A request-level failure with its HTTP status (4xx for the client's fault, 503/504 for capacity)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.hint)


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if hint:
        err["hint"] = hint
    return {"error": err}


def overloaded(message: str, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        message,
        hint=f"retry after {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}
"""Default error codes for statuses raised by the framework itself (404 for an unknown path...)."""
