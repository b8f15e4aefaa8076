"""The torch-free runtime: run a cxr ONNX model with onnxruntime on whatever the machine has.

Dependencies: numpy, onnxruntime, Pillow, pydicom, nothing else (never torch, timm, sklearn or onnx).

    from cxr.runtime import Predictor
    predictor = Predictor.from_path("runs/demo/ensemble.onnx", provider="auto")
    for p in predictor.predict(["a.png", "b.dcm"]):
        print(p.source, p.label, p.confidence, p.error)

Names are imported lazily, so ``import cxr.runtime`` costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.imaging.decode import DecodeLimits
    from cxr.runtime.locate import resolve_model
    from cxr.runtime.predictor import Predictor, PredictorConfig, RawOutput
    from cxr.runtime.results import ResultWriter, open_results
    from cxr.runtime.scan import ScanConfig, ScanResult, find_images, scan_folder
    from cxr.session import SessionConfig, SessionInfo, available_providers, create_session
    from cxr.spec import Prediction

_EXPORTS = {
    "DecodeLimits": "cxr.imaging.decode",
    "resolve_model": "cxr.runtime.locate",
    "Predictor": "cxr.runtime.predictor",
    "PredictorConfig": "cxr.runtime.predictor",
    "RawOutput": "cxr.runtime.predictor",
    "ResultWriter": "cxr.runtime.results",
    "open_results": "cxr.runtime.results",
    "ScanConfig": "cxr.runtime.scan",
    "ScanResult": "cxr.runtime.scan",
    "find_images": "cxr.runtime.scan",
    "scan_folder": "cxr.runtime.scan",
    "SessionConfig": "cxr.session",
    "SessionInfo": "cxr.session",
    "available_providers": "cxr.session",
    "create_session": "cxr.session",
    "Prediction": "cxr.spec",
}

__all__ = [
    "DecodeLimits",
    "Prediction",
    "Predictor",
    "PredictorConfig",
    "RawOutput",
    "ResultWriter",
    "ScanConfig",
    "ScanResult",
    "SessionConfig",
    "SessionInfo",
    "available_providers",
    "create_session",
    "find_images",
    "open_results",
    "resolve_model",
    "scan_folder",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxr.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
