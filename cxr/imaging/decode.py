"""Decode an image file (or bytes) into one 8-bit grayscale array, the models' common currency.

Takes: a path or raw bytes of a PNG, JPEG, BMP, TIFF, WebP or DICOM file. Makes: ``uint8`` [H, W].
Rules (the same at training time and at run time):
- EXIF orientation is applied.
- 8-bit modes (L, LA, RGB, RGBA, P, PA, CMYK, 1) go through Pillow's ``convert("L")`` (ITU-R 601-2 luma);
  alpha is dropped, not composited.
- 16-bit and 32-bit integer or float images (I;16, I;16B, I, F) are scaled linearly from their own
  min..max to 0..255 and rounded: never clipped. A constant image becomes all zeros.
- DICOM goes through ``cxr.imaging.dicom`` (rescale, VOI, MONOCHROME1 inversion).
Guards: a maximum file size and a maximum pixel count (decompression bombs), both configurable.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr.errors import DecodeError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds checked before any pixel is decoded."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000


DEFAULT_LIMITS = DecodeLimits()


def _read(source: Path | str | bytes, limits: DecodeLimits) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = "<upload>"
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise DecodeError(f"{path}: no such file", hint="check the path", path=path) from e
        except OSError as e:
            raise DecodeError(f"{path}: cannot be read ({e})", path=path) from e
        if path.is_dir():
            raise DecodeError(f"{path} is a folder, not an image", hint="pass image files", path=path)
        if size > limits.max_bytes:
            raise DecodeError(
                f"{path}: {size} bytes is over the {limits.max_bytes}-byte limit",
                hint="raise the maximum file size if this file is genuine",
                path=path,
            )
        data = path.read_bytes()
    if len(data) == 0:
        raise DecodeError(f"{name}: empty file (0 bytes)", hint="re-copy or re-export the image", path=name)
    if len(data) > limits.max_bytes:
        raise DecodeError(f"{name}: {len(data)} bytes is over the {limits.max_bytes}-byte limit", path=name)
    return data, name


def looks_like_dicom(data: bytes, name: str = "") -> bool:
    """True for a DICOM Part 10 file (``DICM`` at 128) or a DICOM-suffixed file without the preamble."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return Path(name).suffix.lower() in DICOM_SUFFIXES


def pil_to_gray(img: Image.Image, name: str = "<image>") -> np.ndarray:
    """Convert a Pillow image of any supported mode to uint8 [H, W] by the rules in the module docstring."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.ndim != 2:
            raise DecodeError(f"{name}: unsupported {mode} image with shape {arr.shape}", path=name)
        return scale_to_u8(arr)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        img = img.convert("RGB") if mode != "LA" else img.getchannel("L")
    try:
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    except (ValueError, OSError) as e:
        raise DecodeError(f"{name}: cannot convert {mode} image to grayscale ({e})", path=name) from e


def scale_to_u8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array linearly from its own min..max to 0..255 (rounded); constant -> zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nan)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    if not np.isfinite(lo) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.rint(out), nan=0.0).astype(np.uint8)


def decode_gray(source: Path | str | bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``source`` to uint8 [H, W]; raise ``DecodeError`` naming the file and the fix on failure."""
    data, name = _read(source, limits)
    if looks_like_dicom(data, name):
        from cxr.imaging.dicom import decode_dicom

        return decode_dicom(data, name=name, limits=limits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as e:
            raise DecodeError(
                f"{name}: not an image cxr can read (not PNG, JPEG, BMP, TIFF, WebP or DICOM)",
                hint="remove it from the folder or convert it to PNG",
                path=name,
            ) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError(f"{name}: declared image size is implausibly large ({e})", path=name) from e
        except OSError as e:
            raise DecodeError(f"{name}: cannot be opened ({e})", path=name) from e
        w, h = img.size
        if w * h > limits.max_pixels:
            raise DecodeError(
                f"{name}: {w}x{h} = {w * h} pixels is over the {limits.max_pixels}-pixel limit",
                hint="downscale the image or raise the maximum pixel count",
                path=name,
            )
        n_frames = int(getattr(img, "n_frames", 1))
        if n_frames > 1 and img.format not in ("PNG", "WEBP", "GIF"):
            raise DecodeError(
                f"{name}: has {n_frames} frames; cxr reads single-frame images",
                hint="export the frame to classify as its own file",
                path=name,
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise DecodeError(
                f"{name}: corrupt or truncated image ({e})",
                hint="re-copy or re-export the file",
                path=name,
            ) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError(f"{name}: declared image size is implausibly large ({e})", path=name) from e
    return pil_to_gray(img, name)


def pixel_hash(source: Path | str | bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """SHA-256 of the decoded grayscale pixels and shape: equal for files with the same pixel content."""
    arr = decode_gray(source, limits)
    h = hashlib.sha256()
    h.update(f"{arr.shape[0]}x{arr.shape[1]}:".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
