"""Deployment: Triton model repositories and KServe manifests for a cxr ONNX model."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.deploy.triton import TritonConfig, TritonExportResult, write_triton_repository

_EXPORTS = {
    "TritonConfig": "cxr.deploy.triton",
    "TritonExportResult": "cxr.deploy.triton",
    "write_triton_repository": "cxr.deploy.triton",
}

__all__ = ["TritonConfig", "TritonExportResult", "write_triton_repository"]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
