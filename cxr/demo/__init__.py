"""`cxr demo`: the whole study end to end, resumable stage by stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.demo.config import DemoConfig
    from cxr.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"cxr.demo.config": ["DemoConfig"], "cxr.demo.pipeline": ["DemoResult", "run_demo"]}
)
