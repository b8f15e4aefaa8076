"""Decode an image file (or bytes) into one 8-bit grayscale array, the same at training and run time.

Takes: a path or the bytes of a PNG, JPEG, BMP, TIFF, WebP or DICOM file. Makes: uint8 [H, W]. EXIF
orientation applied; 8-bit modes through Pillow's ``convert("L")`` (alpha dropped); 16/32-bit and float
scaled from their own min..max (never clipped); only these formats are opened (first frame of animated
PNG/WebP/MPO, multi-page TIFF refused); DICOM through ``cxr.imaging.dicom``. File size and pixel count
(from the header) are limited by ``DecodeLimits``. Every failure is a ``DecodeError`` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr.errors import DecodeError
from cxr.imaging.dicom import decode_dicom, is_dicom_image
from cxr.imaging.pixels import DEFAULT_LIMITS, DecodeLimits, scale_to_u8  # also imported from here

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # the only plugins tried; JPEG includes MPO
PILLOW_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")  # .dcm but an image
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp"})
READABLE_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES  # every file name cxr reads as an image


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


def _decode_pillow(data: bytes, name: str, limits: DecodeLimits) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow warns above its own global pixel limit; ours (limits.max_pixels) is checked below instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except UnidentifiedImageError as e:
            raise DecodeError(
                f"{name}: not an image cxr can read (not PNG, JPEG, BMP, TIFF, WebP or DICOM)",
                hint="remove it from the folder or convert it to PNG",
                path=name,
            ) from e
        except Image.DecompressionBombError as e:
            raise DecodeError(
                f"{name}: declared image size is implausibly large ({e})",
                hint="this looks like a decompression bomb; remove the file",
                path=name,
            ) from e
        except Exception as e:  # Pillow's header parsers raise assorted errors on hostile input
            raise DecodeError(f"{name}: cannot be opened ({type(e).__name__}: {e})", path=name) from e
        w, h = img.size
        if w * h > limits.max_pixels:
            raise DecodeError(
                f"{name}: {w}x{h} = {w * h} pixels is over the {limits.max_pixels}-pixel limit",
                hint="downscale the image or raise the maximum pixel count",
                path=name,
            )
        n_frames = int(getattr(img, "n_frames", 1))
        if n_frames > 1 and img.format not in ("PNG", "WEBP", "MPO"):
            raise DecodeError(
                f"{name}: has {n_frames} frames; cxr reads single-frame images",
                hint="export the frame to classify as its own file",
                path=name,
            )
        try:
            img.load()
            return pil_to_gray(img, name)
        except DecodeError:
            raise
        except Image.DecompressionBombError as e:
            raise DecodeError(f"{name}: declared image size is implausibly large ({e})", path=name) from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DecodeError(
                f"{name}: corrupt or truncated image ({e})",
                hint="re-copy or re-export the file",
                path=name,
            ) from e
        except Exception as e:  # never let one hostile file crash a folder scan
            raise DecodeError(
                f"{name}: the image decoder failed ({type(e).__name__}: {e})",
                hint="re-copy or re-export the file",
                path=name,
            ) from e


def decode_gray(source: Path | str | bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``source`` to uint8 [H, W]; DICOM by preamble, suffix, or (old files) content; else ``DecodeError``."""
    data, name = _read(source, limits)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    dicom_suffix = Path(name).suffix.lower() in DICOM_SUFFIXES
    if has_preamble or (dicom_suffix and not data.startswith(PILLOW_MAGIC)):
        return decode_dicom(data, name=name, limits=limits)
    try:
        return _decode_pillow(data, name, limits)
    except DecodeError as e:
        if isinstance(e.__cause__, UnidentifiedImageError) and is_dicom_image(data):
            return decode_dicom(data, name=name, limits=limits)
        raise


def pixel_hash(source: Path | str | bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """SHA-256 of the decoded grayscale pixels and shape: equal for files with the same pixel content."""
    arr = decode_gray(source, limits)
    h = hashlib.sha256()
    h.update(f"{arr.shape[0]}x{arr.shape[1]}:".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
