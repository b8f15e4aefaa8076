"""The API's endpoints: ``api`` (predict, model, metrics; behind auth) and ``probes`` (health, readiness)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from cxr import __version__
from cxr.errors import CxrError
from cxr.labels import NOTICE
from cxr.runtime.assess import with_reasons
from cxr.runtime.overlay import overlay_png
from cxr.serve.errors import ApiError
from cxr.serve.pipeline import Outcome, run_prediction
from cxr.serve.prometheus import CONTENT_TYPE_LATEST
from cxr.serve.schemas import (
    ERROR_RESPONSES,
    BatchItem,
    BatchResponse,
    ErrorDetail,
    HealthOut,
    ModelInfo,
    ModelRef,
    PredictionOut,
    ReadyOut,
    ServingLimits,
    Timing,
)
from cxr.serve.state import ServerState
from cxr.spec import Prediction, provenance_warnings

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor

_FILE = {"type": "string", "format": "binary"}


def _form(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI multipart body with the one required ``field``."""
    return {"schema": {"type": "object", "required": [field], "properties": {field: schema}}}


PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image: a multipart upload in the field 'file', or the file itself as the body. "
        "The format is sniffed from the content (PNG, JPEG, BMP, TIFF, WebP, DICOM); the declared type is "
        "only a hint.",
        "content": {
            "multipart/form-data": _form("file", _FILE),
            **dict.fromkeys(
                ("application/octet-stream", "image/png", "image/jpeg", "application/dicom"),
                {"schema": _FILE},
            ),
        },
    }
}
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Several images as multipart parts named 'files' (or 'file').",
        "content": {"multipart/form-data": _form("files", {"type": "array", "items": _FILE})},
    }
}


def model_ref(state: ServerState) -> ModelRef:
    predictor, _, _ = state.require_ready()
    card = predictor.metadata.card
    version = card.get("version") or card.get("model_version") or card.get("cxr_version") or "unversioned"
    return ModelRef(id=predictor.model_id, version=str(version), kind=str(card.get("kind", "unknown")))


def _prediction(state: ServerState, outcome: Outcome, started: float) -> PredictionOut:
    result = outcome.result
    if result is None:  # callers only pass successful outcomes
        raise ValueError("no result")
    p = with_reasons(result.prediction, outcome.reasons)
    if p.label is None or p.probability is None:
        raise ValueError(f"prediction without a label: {p.error}")
    return PredictionOut(
        **{**p.to_dict(), "source": outcome.source},
        model=model_ref(state),
        timing=Timing(
            total_ms=(time.perf_counter() - started) * 1000,
            decode_ms=outcome.decode_seconds * 1000,
            queue_ms=result.queue_seconds * 1000,
            inference_ms=result.inference_seconds * 1000,
            batch_size=result.batch_size,
        ),
    )


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {  # the route's class is text/plain; its errors are JSON like everywhere else
        "description": ERROR_RESPONSES[401]["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    },
}


def overlay_for(predictor: Predictor, image: np.ndarray, pred: Prediction) -> bytes:
    """The overlay of ``image`` for ``pred`` (the heatmap of the class ``pred`` names)."""
    raw = predictor.run(predictor.prepare([image]), heatmaps=True)
    if raw.heatmaps is None:
        raise CxrError(
            f"{predictor.model_path} returned no heatmap", hint="rebuild it with `cxr fuse --heatmaps`"
        )
    return overlay_png(image, pred, raw.heatmaps[0])


def get_state(request: Request) -> ServerState:
    """The app's ``ServerState`` (set by ``create_app``), for ``Depends``."""
    state: ServerState = request.app.state.cxr
    return state


State = Annotated[ServerState, Depends(get_state)]

api = APIRouter()
"""The model's endpoints (``/v1/*``, ``/metrics``): ``create_app`` includes it behind the auth dependencies."""
probes = APIRouter()
"""Liveness, readiness and the root: always open, for load balancers and orchestrators."""


@api.post(
    "/v1/predict",
    response_model=PredictionOut,
    responses=ERROR_RESPONSES,
    openapi_extra=PREDICT_BODY,
    summary="Classify one chest X-ray (decision support only)",
)
async def predict(request: Request, state: State, heatmap: bool = False) -> PredictionOut:
    """``?heatmap=true``: also the overlay PNG (base64) of where the ensemble looked (``cxr serve --heatmaps``)."""
    started = time.perf_counter()
    if heatmap and state.heatmap_predictor is None:
        raise ApiError(
            400,
            "heatmaps_unavailable",
            "this server was started without heatmaps",
            hint="start it with --heatmaps (CXR_HEATMAPS=1) and ensemble.heatmaps.onnx beside the model "
            "(built by `cxr fuse --heatmaps`), or drop ?heatmap=true",
        )
    outcome = (await run_prediction(state, request, many=False))[0]
    if outcome.error is not None:
        raise outcome.error
    out = _prediction(state, outcome, started)
    if heatmap and state.heatmap_predictor is not None and outcome.result is not None:
        pred = with_reasons(outcome.result.prediction, outcome.reasons)
        png = await asyncio.get_running_loop().run_in_executor(
            state.decode_pool, overlay_for, state.heatmap_predictor, outcome.image, pred
        )
        out.heatmap_png = base64.b64encode(png).decode("ascii")
    return out


@api.post(
    "/v1/predict/batch",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=BATCH_BODY,
    summary="Classify several chest X-rays; each file gets its own result or error",
)
async def predict_batch(request: Request, state: State) -> BatchResponse:
    started = time.perf_counter()
    outcomes = await run_prediction(state, request, many=True)
    items = []
    for o in outcomes:
        if o.error is not None:
            err = ErrorDetail(code=o.error.code, message=o.error.message, hint=o.error.hint)
            items.append(BatchItem(source=o.source, status=o.error.status, error=err))
        else:
            items.append(BatchItem(source=o.source, status=200, prediction=_prediction(state, o, started)))
    failed = sum(1 for i in items if i.error is not None)
    return BatchResponse(results=items, succeeded=len(items) - failed, failed=failed, model=model_ref(state))


@api.get("/v1/model", response_model=ModelInfo, responses=ERROR_RESPONSES)
async def model_info(state: State) -> ModelInfo:
    predictor, _, _ = state.require_ready()
    cfg = state.cfg
    meta = predictor.metadata
    return ModelInfo(
        model=model_ref(state),
        sha256_prefix=predictor.model_id,
        file_name=predictor.model_path.name,  # the file that runs (a verified INT8 variant of cfg.model)
        classes=list(predictor.classes),
        members=list(predictor.member_names),
        input_format=meta.input_format,
        preprocess=meta.preprocess.to_dict(),
        card=dict(meta.card),
        warnings=list(provenance_warnings(meta.card)),
        provider=predictor.provider,
        providers=list(predictor.info.providers),
        precision=predictor.info.precision,
        device=predictor.info.device,
        provider_warnings=list(predictor.info.warnings),
        serving=ServingLimits(**{f: getattr(cfg, f) for f in ServingLimits.model_fields}),
        notice=NOTICE,
    )


@api.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
async def metrics(state: State) -> PlainTextResponse:
    """Prometheus text format: requests by status, latency, queue depth, batch sizes."""
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@probes.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def healthz(state: State) -> Any:
    """The process is alive (503 only when the model failed to load and never will be served)."""
    if state.status == "failed":
        return JSONResponse({"status": "failed"}, status_code=503)
    return HealthOut(status="ok")


@probes.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def readyz(state: State) -> Any:
    """Ready: model loaded, provider confirmed, warm-up done. 503 before that (or after a failure)."""
    predictor = state.predictor
    body = ReadyOut(
        status=state.status,
        model_id=predictor.model_id if predictor else None,
        provider=predictor.provider if predictor else None,
        providers=list(predictor.info.providers) if predictor else [],
        precision=predictor.info.precision if predictor else None,
        device=predictor.info.device if predictor else None,
        warmup_seconds=state.warmup_seconds,
        message=state.error or ("; ".join(predictor.info.warnings) if predictor else None) or None,
    )
    if state.status != "ready":
        headers = {"Retry-After": str(state.cfg.retry_after_s)} if state.status == "loading" else {}
        return JSONResponse(body.model_dump(), status_code=503, headers=headers)
    return body


@probes.get("/", include_in_schema=False)
async def root() -> JSONResponse:
    return JSONResponse(
        {"service": "cxr", "version": __version__, "docs": "/docs", "notice": NOTICE}, status_code=200
    )
