"""The export stage: each trained member to ONNX with cxr metadata, verified, with FP16/INT8 variants."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.export.run_export import export_run, raise_for_failures, verify_run
    from cxr.export.run_types import RunExportConfig, RunExportResult

_EXPORTS = {
    "RunExportConfig": "cxr.export.run_types",
    "RunExportResult": "cxr.export.run_types",
    "export_run": "cxr.export.run_export",
    "raise_for_failures": "cxr.export.run_export",
    "verify_run": "cxr.export.run_export",
}

__all__ = [
    "RunExportConfig",
    "RunExportResult",
    "export_run",
    "raise_for_failures",
    "verify_run",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
