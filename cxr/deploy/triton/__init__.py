"""Write a Triton model repository (and a KServe manifest) for a cxr ONNX model, from its real signature."""

from cxr.deploy.triton.config import KSERVE_FILE, STORAGE_URI_PLACEHOLDER, TritonConfig
from cxr.deploy.triton.repository import TritonExportResult, render_kserve, write_triton_repository

__all__ = [
    "KSERVE_FILE",
    "STORAGE_URI_PLACEHOLDER",
    "TritonConfig",
    "TritonExportResult",
    "render_kserve",
    "write_triton_repository",
]
