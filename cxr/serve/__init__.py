"""cxr.serve: the HTTP inference API (FastAPI on uvicorn, onnxruntime behind a dynamic batcher; no torch).

Modules: ``config`` (ServeConfig, API key loading), ``app`` (``create_app`` factory), ``routes`` (endpoints),
``pipeline`` (one request: admit, read, decode, batch), ``batcher`` (dynamic batching), ``limits`` (body
cap, admission gate), ``uploads`` (content sniffing and decoding), ``auth``, ``metrics``, ``state`` (the
lifespan-managed model), ``server`` (uvicorn runner). ``ServeConfig`` and ``create_app`` are importable from
here; fastapi is imported only when ``create_app`` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxr.serve.config import ServeConfig

if TYPE_CHECKING:
    from cxr.serve.app import create_app

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cxr.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'cxr.serve' has no attribute {name!r}")
