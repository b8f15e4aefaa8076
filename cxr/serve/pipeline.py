"""Takes a prediction request; admits it, reads it, checks each upload by its content, decodes and batches
it under one timeout; makes ``Outcome``s (or an ``ApiError`` saying what was wrong)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from cxr.errors import CxrError
from cxr.imaging.decode import DecodeLimits
from cxr.imaging.preprocess import resize_gray
from cxr.runtime.assess import header_reasons
from cxr.serve.errors import ApiError, overloaded
from cxr.serve.limits import Overloaded
from cxr.serve.state import BatcherStopped, BatchResult, ServerState
from cxr.spec import Reason

log = logging.getLogger(__name__)

SUPPORTED = "PNG, JPEG, BMP, TIFF, WebP or DICOM"
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
DICOM_TYPES = frozenset({"application/dicom", "application/dicom+binary"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_CHARS = 200

Decoder = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and the client's (untrusted) name and declared type."""

    data: bytes
    filename: str = "upload"
    declared_type: str | None = None


def safe_name(name: str | None) -> str:
    """A label for the client's file name: base name only, no control characters, at most 200 chars."""
    if not name:
        return "upload"
    base = PurePosixPath(name.replace("\\", "/")).name
    base = _CONTROL.sub("", base).strip()[:MAX_NAME_CHARS]
    return base or "upload"


def _bare_dicom(data: bytes) -> bool:
    """A DICOM data set without preamble starts with a little-endian tag of group 0x0002 or 0x0008."""
    return len(data) >= 8 and data[0:2] in (b"\x02\x00", b"\x08\x00") and data[3] == 0


def sniff(data: bytes, declared_type: str | None = None, filename: str = "") -> str | None:
    """The format the bytes really have (png, jpeg, bmp, tiff, webp, dicom), or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    hinted = (declared_type or "").split(";")[0].strip().lower() in DICOM_TYPES or filename.lower().endswith(
        (".dcm", ".dicom")
    )
    if _bare_dicom(data) or (hinted and len(data) >= 8 and data[:4] != b"\x00\x00\x00\x00"):
        return "dicom"
    return None


def _too_many_pixels(name: str, w: int, h: int, max_pixels: int) -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"{name}: {w}x{h} = {w * h} pixels is over the server's {max_pixels}-pixel limit",
        hint="downscale the image before sending it",
    )


def _multi_frame(name: str, frames: int) -> ApiError:
    return ApiError(
        422,
        "multi_frame",
        f"{name}: has {frames} frames; cxr classifies single-frame images",
        hint="send the frame to classify as its own file",
    )


def _check_raster(data: bytes, name: str, max_pixels: int) -> None:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except Image.DecompressionBombError as e:
            raise ApiError(413, "image_too_large", f"{name}: declared image size is implausibly large") from e
        except Exception as e:  # Pillow raises many types for hostile headers; all mean "cannot open"
            raise ApiError(
                422, "corrupt_image", f"{name}: the image header is corrupt or truncated", hint="re-export it"
            ) from e
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise _too_many_pixels(name, w, h, max_pixels)
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1 and img.format not in ("PNG", "WEBP", "MPO"):  # animations, phone photos: frame 1
                raise _multi_frame(name, frames)


def _check_dicom(data: bytes, name: str, max_pixels: int) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # pydicom raises many types for malformed data sets
        raise ApiError(
            422, "corrupt_image", f"{name}: malformed DICOM data set", hint="re-export the DICOM file"
        ) from e
    if rows <= 0 or cols <= 0:
        raise ApiError(422, "corrupt_image", f"{name}: DICOM file without an image (no Rows/Columns)")
    if frames > 1:
        raise _multi_frame(name, frames)
    if rows * cols > max_pixels:
        raise _too_many_pixels(name, cols, rows, max_pixels)


def decode_upload(upload: Upload, decode: Decoder, limits: DecodeLimits) -> np.ndarray:
    """Sniff, check the declared size, decode (the content decides, never the name); ``ApiError`` on bad input."""
    name = safe_name(upload.filename)
    data = upload.data
    if not data:
        raise ApiError(400, "empty_file", f"{name}: the upload is empty (0 bytes)", hint="attach the image")
    fmt = sniff(data, upload.declared_type, name)
    if fmt is None:
        declared = upload.declared_type or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{name}: not an image cxr can read (declared type: {declared[:80]}); cxr reads {SUPPORTED}",
            hint="convert the image to PNG",
        )
    if fmt == "dicom":
        _check_dicom(data, name, limits.max_pixels)
    else:
        _check_raster(data, name, limits.max_pixels)
    try:
        if fmt == "dicom" and data[128:132] != b"DICM":
            from cxr.imaging.dicom import decode_dicom

            gray = decode_dicom(data, name=name, limits=limits)
        else:
            gray = decode(data)
    except CxrError as e:
        raise ApiError(422, "undecodable", e.message.replace("<upload>", name), hint=e.hint) from e
    except Exception as e:  # a decoder bug on hostile input must not become a 500 (nor kill the server)
        log.warning("decoding %s failed unexpectedly: %r", name, e)
        raise ApiError(422, "undecodable", f"{name}: the {fmt} image cannot be decoded") from e
    if gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
        raise ApiError(422, "undecodable", f"{name}: decoded to an unusable array {gray.dtype} {gray.shape}")
    return gray


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
