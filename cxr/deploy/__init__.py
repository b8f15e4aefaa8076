"""Deployment: Triton model repositories and KServe manifests for a cxr ONNX model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.deploy.triton import TritonConfig, TritonExportResult, write_triton_repository

__all__ = ["TritonConfig", "TritonExportResult", "write_triton_repository"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"cxr.deploy.triton": ["TritonConfig", "TritonExportResult", "write_triton_repository"]}
)
