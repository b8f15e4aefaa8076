"""Write a Triton model repository (and a KServe manifest) for a cxr ONNX model, from its real signature."""

from cxr.deploy.triton.config import (
    CXR_JSON,
    KSERVE_FILE,
    LABELS_FILE,
    MODEL_FILE,
    STORAGE_URI_PLACEHOLDER,
    TRT_PRECISIONS,
    TritonConfig,
    TrtPrecision,
)
from cxr.deploy.triton.kserve import kserve_resources, render_kserve
from cxr.deploy.triton.pbtxt import render_config, resolve_trt_precision
from cxr.deploy.triton.repository import TritonExportResult, default_model_name, write_triton_repository
from cxr.deploy.triton.signature import (
    ONNX_TO_TRITON,
    ModelSignature,
    TensorSpec,
    check_contract,
    external_data_files,
    is_int8,
    read_model,
    signature_of,
)

__all__ = [
    "CXR_JSON",
    "KSERVE_FILE",
    "LABELS_FILE",
    "MODEL_FILE",
    "ONNX_TO_TRITON",
    "STORAGE_URI_PLACEHOLDER",
    "TRT_PRECISIONS",
    "ModelSignature",
    "TensorSpec",
    "TritonConfig",
    "TritonExportResult",
    "TrtPrecision",
    "check_contract",
    "default_model_name",
    "external_data_files",
    "is_int8",
    "kserve_resources",
    "read_model",
    "render_config",
    "render_kserve",
    "resolve_trt_precision",
    "signature_of",
    "write_triton_repository",
]
