"""The fusion stage: the members and the meta-learner as ONE verified ensemble graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.fuse._fuse import describe, fuse, run_members
    from cxr.fuse.types import FuseConfig, FusedFile, FuseResult

__all__ = ["FuseConfig", "FuseResult", "FusedFile", "describe", "fuse", "run_members"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.fuse.types": ["FuseConfig", "FuseResult", "FusedFile"],
        "cxr.fuse._fuse": ["describe", "fuse", "run_members"],
    },
)
