"""The evaluation stage: members, voting and stacking on the test split, one split or folds pooled."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.evaluate._evaluate import describe, evaluate
    from cxr.evaluate.pooled import pool_folds
    from cxr.evaluate.pooled_report import describe_pooled
    from cxr.evaluate.pooled_types import PoolConfig, PooledResult
    from cxr.evaluate.types import EvalConfig, EvalResult

_EXPORTS = {
    "EvalConfig": "cxr.evaluate.types",
    "EvalResult": "cxr.evaluate.types",
    "describe": "cxr.evaluate._evaluate",
    "evaluate": "cxr.evaluate._evaluate",
    "PoolConfig": "cxr.evaluate.pooled_types",
    "PooledResult": "cxr.evaluate.pooled_types",
    "pool_folds": "cxr.evaluate.pooled",
    "describe_pooled": "cxr.evaluate.pooled_report",
}

__all__ = [
    "EvalConfig",
    "EvalResult",
    "PoolConfig",
    "PooledResult",
    "describe",
    "describe_pooled",
    "evaluate",
    "pool_folds",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
