"""The evaluation stage: members, voting and stacking on the test split, one split or folds pooled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.evaluate._evaluate import describe, evaluate
    from cxr.evaluate.pooled import PoolConfig, PooledResult, describe_pooled, pool_folds
    from cxr.evaluate.types import EvalConfig, EvalResult

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
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.evaluate.types": ["EvalConfig", "EvalResult"],
        "cxr.evaluate._evaluate": ["describe", "evaluate"],
        "cxr.evaluate.pooled": ["PoolConfig", "PooledResult", "describe_pooled", "pool_folds"],
    },
)
