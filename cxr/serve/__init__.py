"""cxr.serve: the HTTP inference API (FastAPI; no torch), imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.serve.app import create_app
    from cxr.serve.config import ServeConfig
    from cxr.serve.server import uvicorn_options

__all__ = ["ServeConfig", "create_app", "uvicorn_options"]
_HOMES = {
    "ServeConfig": "cxr.serve.config",
    "create_app": "cxr.serve.app",
    "uvicorn_options": "cxr.serve.server",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'cxr.serve' has no attribute {name!r}")
