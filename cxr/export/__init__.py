"""The export stage: each trained member to ONNX with cxr metadata, verified, with FP16/INT8 variants."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.export.run_export import (
        RunExportConfig,
        RunExportResult,
        export_run,
        raise_for_failures,
        verify_run,
    )

__all__ = ["RunExportConfig", "RunExportResult", "export_run", "raise_for_failures", "verify_run"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.export.run_export": [
            "RunExportConfig",
            "RunExportResult",
            "export_run",
            "raise_for_failures",
            "verify_run",
        ],
    },
)
