"""`cxr demo`: the whole study end to end, resumable stage by stage."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.demo.config import DemoConfig
    from cxr.demo.pipeline import DemoResult, run_demo

_EXPORTS = {
    "DemoConfig": "cxr.demo.config",
    "DemoResult": "cxr.demo.pipeline",
    "run_demo": "cxr.demo.pipeline",
}

__all__ = [
    "DemoConfig",
    "DemoResult",
    "run_demo",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
