"""The stacking stage: a scikit-learn meta-learner on member probabilities, and its ONNX form."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.stack.stack import MetaConfig, MetaResult, describe, fit_meta

_EXPORTS = {
    "MetaConfig": "cxr.stack.stack",
    "MetaResult": "cxr.stack.stack",
    "describe": "cxr.stack.stack",
    "fit_meta": "cxr.stack.stack",
}

__all__ = [
    "MetaConfig",
    "MetaResult",
    "describe",
    "fit_meta",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
