"""Takes a prediction request; admits, reads, decodes and batches it under one timeout; makes ``Outcome``s."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from cxr.imaging.preprocess import resize_gray
from cxr.runtime.assess import header_reasons
from cxr.serve.batcher import BatcherStopped, BatchResult
from cxr.serve.errors import ApiError, overloaded
from cxr.serve.limits import Overloaded
from cxr.serve.state import ServerState
from cxr.serve.uploads import Upload, decode_upload, safe_name
from cxr.spec import Reason

MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Outcome:
    source: str
    result: BatchResult | None = None
    error: ApiError | None = None
    decode_seconds: float = 0.0
    reasons: tuple[Reason, ...] = ()  # the input gate's header reasons (cxr.runtime.assess)
    image: Any = None  # the decoded uint8 gray image at its own size (for a heatmap overlay)


@dataclass
class _Progress:
    phase: str = "queue"
    held: list[concurrent.futures.Future[Any]] = field(default_factory=list)


async def read_uploads(request: Request, *, many: bool, max_files: int) -> list[Upload]:
    """The uploaded files: multipart ``file`` (single) / ``files`` or ``file`` (batch), or the raw body."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        async with request.form(
            max_files=max_files if many else 1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        ) as form:
            fields = ("files", "file") if many else ("file",)
            parts = [v for k, v in form.multi_items() if k in fields]
            if not parts:
                names = " or ".join(f"'{f}'" for f in fields)
                raise ApiError(400, "missing_file", f"the multipart body has no {names} field", hint=_HOW)
            uploads = []
            for part in parts:
                if not isinstance(part, UploadFile):
                    raise ApiError(400, "not_a_file", "form field holds text, not a file upload", hint=_HOW)
                uploads.append(Upload(await part.read(), safe_name(part.filename), part.content_type))
            return uploads
    if many:
        raise ApiError(
            415,
            "unsupported_media_type",
            "the batch endpoint takes multipart/form-data with one or more 'files' fields",
            hint="send several -F files=@image.png parts, or POST single images to /v1/predict",
        )
    return [Upload(await request.body(), "upload", content_type or None)]


_HOW = "curl -F file=@image.png http://HOST/v1/predict  (or send the image itself as the request body)"


async def _decode_all(
    state: ServerState, uploads: list[Upload], progress: _Progress
) -> list[tuple[Any, float]]:
    predictor, _, pool = state.require_ready()

    spec = predictor.metadata.preprocess

    def decode_and_resize(up: Upload) -> tuple[np.ndarray, tuple[Reason, ...], np.ndarray]:
        # Resizing here, in the decode pool, keeps the per-image work off the single inference thread.
        image = decode_upload(up, predictor.decode, state.limits)
        return resize_gray(image, spec), header_reasons(up.data), image

    async def one(up: Upload) -> tuple[Any, float]:
        t0 = time.perf_counter()
        fut = pool.submit(decode_and_resize, up)
        progress.held.append(fut)
        try:
            return await asyncio.wrap_future(fut), time.perf_counter() - t0
        except ApiError as e:
            return e, time.perf_counter() - t0

    return list(await asyncio.gather(*(one(u) for u in uploads)))


async def _run(state: ServerState, request: Request, many: bool, progress: _Progress) -> list[Outcome]:
    state.require_ready()
    try:
        await state.gate.acquire()
    except Overloaded:
        state.metrics.rejected.labels(reason="queue_full").inc()
        raise overloaded(
            f"the server is at capacity ({state.cfg.max_concurrency} requests in progress, "
            f"{state.cfg.max_queue} waiting)",
            state.cfg.retry_after_s,
        ) from None
    try:
        progress.phase = "read"
        try:
            uploads = await read_uploads(request, many=many, max_files=state.cfg.max_batch_files)
        except ClientDisconnect:  # nobody reads the answer; a 4xx, not a logged 500, keeps metrics honest
            raise ApiError(
                400, "client_disconnected", "the client closed the connection mid-upload"
            ) from None
        progress.phase = "decode"
        decoded = await _decode_all(state, uploads, progress)
        if not many and isinstance(decoded[0][0], ApiError):
            raise decoded[0][0]
        progress.phase = "infer"
        _, batcher, _ = state.require_ready()

        async def infer(up: Upload, decoded: Any, seconds: float) -> Outcome:
            if isinstance(decoded, ApiError):
                return Outcome(up.filename, error=decoded, decode_seconds=seconds)
            gray, reasons, image = decoded
            try:
                result = await batcher.submit(gray, up.filename)
            except BatcherStopped as e:
                retry = {"Retry-After": str(state.cfg.retry_after_s)}
                raise ApiError(503, "not_ready", str(e), headers=retry) from e
            return Outcome(up.filename, result=result, decode_seconds=seconds, reasons=reasons, image=image)

        return list(
            await asyncio.gather(*(infer(u, g, s) for u, (g, s) in zip(uploads, decoded, strict=True)))
        )
    finally:
        state.gate.release_after(progress.held)


async def run_prediction(state: ServerState, request: Request, *, many: bool) -> list[Outcome]:
    """The request's outcomes; ``ApiError`` for request-level failures (timeout: 503 queued, 408 reading, else 504)."""
    progress = _Progress()
    timeout = state.cfg.request_timeout_s
    try:
        return await asyncio.wait_for(_run(state, request, many, progress), timeout)
    except asyncio.TimeoutError:
        state.metrics.rejected.labels(reason=f"timeout_{progress.phase}").inc()
        if progress.phase == "queue":
            raise overloaded(
                f"no capacity freed up within the {timeout:g} s request timeout", state.cfg.retry_after_s
            ) from None
        if progress.phase == "read":
            raise ApiError(
                408,
                "request_timeout",
                f"the request body did not arrive within the {timeout:g} s request timeout",
                hint="check the connection, or send a smaller file",
                headers={"Connection": "close"},
            ) from None
        raise ApiError(
            504,
            "timeout",
            f"the prediction took longer than the {timeout:g} s request timeout",
            hint="retry later; the server may be overloaded",
        ) from None
