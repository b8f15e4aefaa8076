"""The torch-free runtime: run a cxr ONNX model with onnxruntime (``Predictor``, folder scans, result files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.imaging.decode import DecodeLimits
    from cxr.runtime.locate import resolve_model
    from cxr.runtime.predictor import Predictor, PredictorConfig, RawOutput
    from cxr.runtime.results import ResultWriter, open_results
    from cxr.runtime.scan import ScanConfig, ScanResult, find_images, scan_folder
    from cxr.session import SessionConfig, SessionInfo, available_providers, create_session
    from cxr.spec import Prediction

__all__ = [
    "DecodeLimits", "Prediction", "Predictor", "PredictorConfig", "RawOutput", "ResultWriter", "ScanConfig",
    "ScanResult", "SessionConfig", "SessionInfo", "available_providers", "create_session", "find_images",
    "open_results", "resolve_model", "scan_folder",
]  # fmt: skip
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.imaging.decode": ["DecodeLimits"],
        "cxr.runtime.locate": ["resolve_model"],
        "cxr.runtime.predictor": ["Predictor", "PredictorConfig", "RawOutput"],
        "cxr.runtime.results": ["ResultWriter", "open_results"],
        "cxr.runtime.scan": ["ScanConfig", "ScanResult", "find_images", "scan_folder"],
        "cxr.session": ["SessionConfig", "SessionInfo", "available_providers", "create_session"],
        "cxr.spec": ["Prediction"],
    },
)
