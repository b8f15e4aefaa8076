"""The fusion stage: the members and the meta-learner as ONE verified ensemble graph."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.fuse._fuse import describe, fuse, run_members
    from cxr.fuse.types import FuseConfig, FusedFile, FuseResult

_EXPORTS = {
    "FuseConfig": "cxr.fuse.types",
    "FuseResult": "cxr.fuse.types",
    "FusedFile": "cxr.fuse.types",
    "describe": "cxr.fuse._fuse",
    "fuse": "cxr.fuse._fuse",
    "run_members": "cxr.fuse._fuse",
}

__all__ = [
    "FuseConfig",
    "FuseResult",
    "FusedFile",
    "describe",
    "fuse",
    "run_members",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
