"""cxr.serve: the HTTP inference API (FastAPI; no torch), imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.serve.app import create_app
    from cxr.serve.config import ServeConfig
    from cxr.serve.server import uvicorn_options

__all__ = ["ServeConfig", "create_app", "uvicorn_options"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.serve.config": ["ServeConfig"],
        "cxr.serve.app": ["create_app"],
        "cxr.serve.server": ["uvicorn_options"],
    },
)
