"""Write a Triton Inference Server model repository (and a KServe manifest) for a cxr ONNX model.

Takes: a cxr ONNX file (fused ensemble, its INT8 variant, or a single member) and a ``TritonConfig``.
Makes, under the repository folder ``OUT``::

    OUT/<name>/config.pbtxt        ONNX Runtime backend config written from the graph's real signature
    OUT/<name>/<version>/model.onnx  the model (copied or hard-linked; external-data files beside it)
    OUT/<name>/labels.txt          class names in output order (Triton's classification extension)
    OUT/<name>/cxr.json            the model's cxr metadata, signature, sha256 and the notice
    OUT/<name>/README.md           what the folder is and how to query it
    OUT/kserve-inferenceservice.yaml  a KServe InferenceService that serves the repository with Triton

Every name, data type and dimension in ``config.pbtxt`` comes from the graph (onnxruntime's view of its
inputs and outputs, exactly what Triton's ONNX Runtime backend sees); nothing about the model is
hard-coded. The copy in the version folder is reopened and its signature compared with the source before
the repository is moved into place. Needs onnxruntime; uses onnx (when installed) only to list
external-data files. No Triton, tritonclient or protobuf dependency: the config is written as text.
"""

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
