"""The API's response bodies as pydantic models (the OpenAPI schema)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, Field, create_model

from cxr.labels import NOTICE
from cxr.spec import Prediction, result_json_schema


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. payload_too_large, multi_frame.")
    message: str = Field(description="What was wrong with the request.")
    hint: str | None = Field(default=None, description="What to do about it.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelRef(BaseModel):
    id: str = Field(description="First 16 hex digits of the model file's SHA-256.")
    version: str = Field(description="The model's version from its metadata card (or 'unversioned').")
    kind: str = Field(description="ensemble or member.")


class Timing(BaseModel):
    total_ms: float = Field(description="Server time for this request, from arrival to response.")
    decode_ms: float
    queue_ms: float = Field(description="Time waiting for the dynamic batcher to start this image's batch.")
    inference_ms: float = Field(description="Duration of the inference batch this image ran in.")
    batch_size: int = Field(description="Images in that batch (several requests coalesced).")


PRECISION_DOC = (
    "The arithmetic the backend really runs (openvino: fp32 or bf16; int8: the verified INT8 graph, its float "
    "ops in FP32); null: the file's own as stored (FP32)."
)


_API_DOCS = {  # where the API's answer says more than the result schema
    "source": "The upload's file name (base name only) or 'upload'.",
    "precision": PRECISION_DOC,
    "error": "Always null here (errors answer with a 4xx).",
}


def _result_fields() -> dict[str, Any]:
    """``cxr.spec.Prediction``'s fields, typed and described as the result schema does (in its order)."""
    hints = get_type_hints(Prediction)
    docs = result_json_schema()["properties"]
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Prediction):
        default = f.default if f.default is not dataclasses.MISSING else ...
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        doc = _API_DOCS.get(f.name, docs[f.name].get("description"))
        fields[f.name] = (hints[f.name], Field(default=default, description=doc))
    return fields


class PredictionOut(create_model("_Result", **_result_fields())):  # type: ignore[misc]
    """One image's result: the fields of ``cxr.spec.Prediction`` (the result schema every surface emits,
    ``docs/result.schema.json``) plus the API's own ``model``, ``timing`` and ``heatmap_png``."""

    model: ModelRef
    timing: Timing
    heatmap_png: str | None = Field(
        default=None,
        description="With ?heatmap=true: a base64 PNG overlay of where the ensemble looked for the predicted "
        "class (the radiograph at its own aspect ratio, the map, its legend, the result, file name, model, "
        "date and the notice burnt in). Not a finding.",
    )


API_ONLY_FIELDS = ("model", "timing", "heatmap_png")
"""What ``PredictionOut`` adds to the result schema (a test checks the rest is exactly it)."""


class BatchItem(BaseModel):
    source: str
    status: int = Field(description="200, or the 4xx this file alone would have received.")
    prediction: PredictionOut | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int
    model: ModelRef
    notice: str = NOTICE


class HealthOut(BaseModel):
    status: Literal["ok", "failed"]


class ReadyOut(BaseModel):
    status: Literal["loading", "ready", "failed", "stopped"]
    model_id: str | None = None
    provider: str | None = None
    providers: list[str] = Field(default_factory=list)
    precision: str | None = Field(default=None, description=PRECISION_DOC)
    device: str | None = None
    warmup_seconds: float | None = None
    message: str | None = Field(
        default=None, description="Why the model is not served, or a provider fallback warning."
    )


class ServingLimits(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    max_body_bytes: int
    max_pixels: int
    max_batch_files: int
    request_timeout_s: float
    max_concurrency: int
    max_queue: int


class ModelInfo(BaseModel):
    model: ModelRef
    sha256_prefix: str
    file_name: str
    classes: list[str]
    members: list[str]
    input_format: str
    preprocess: dict[str, Any] = Field(description="The preprocessing spec the model was trained with.")
    card: dict[str, Any] = Field(description="Provenance from the model's metadata.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Plain warnings about what trained the model (synthetic images, random weights, no provenance).",
    )
    provider: str
    providers: list[str]
    precision: str | None = Field(default=None, description=PRECISION_DOC)
    device: str | None = None
    provider_warnings: list[str]
    serving: ServingLimits
    notice: str = NOTICE


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed request (bad multipart body, empty upload, too many files).",
        401: "Missing or wrong API key (only when the server has one).",
        408: "The request body arrived too slowly.",
        413: "Request body or decoded image over the server's limit.",
        415: "The upload is not an image format cxr reads.",
        422: "Corrupt, truncated, multi-frame or otherwise undecodable image.",
        503: "Overloaded (queue full) or model not ready; see Retry-After.",
        504: "The request took longer than the server's request timeout.",
    }.items()
}
