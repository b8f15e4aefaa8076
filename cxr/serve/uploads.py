"""Takes an upload's bytes and the limits; makes uint8 grayscale, or an ``ApiError`` saying what was wrong."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.decode import DecodeLimits
from cxr.serve.errors import ApiError

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
