"""Decode a DICOM radiograph into the same uint8 [H, W] that ``decode_gray`` makes for PNGs.

Order (PS3.3 C.11): modality LUT or rescale, then the first VOI LUT or window, then MONOCHROME1 inversion,
then the VOI output range to 0..255 (without VOI: 8-bit data kept, else min..max). Colour becomes luma as
for PNGs. No pixel data, multi-frame, too many pixels (from Rows x Columns), truncated data and compressed
syntaxes without an installed decoder are refused with a ``DecodeError`` that says what to install or do.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np

from cxr.errors import DecodeError
from cxr.imaging.pixels import DecodeLimits, scale_to_u8

log = logging.getLogger(__name__)

_JPEG_LIBJPEG = (
    "install the dicom extra (pip install -e '.[dicom]' from a clone: python-gdcm, BSD), or "
    "pip install pylibjpeg pylibjpeg-libjpeg (GPL-3.0)"
)
_J2K = (
    "pip install pylibjpeg pylibjpeg-openjpeg, or pip install python-gdcm (or a Pillow built with OpenJPEG)"
)
DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "Pillow (a core dependency) decodes it; or " + _JPEG_LIBJPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "Pillow (a core dependency) decodes it; or " + _JPEG_LIBJPEG,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _JPEG_LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _JPEG_LIBJPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG_LIBJPEG + ", or pip install pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_LIBJPEG + ", or pip install pyjpegls",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pip install pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pip install pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pip install pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pydicom decodes it; pip install pylibjpeg pylibjpeg-rle is faster",  # RLE
}
"""Which package decodes each compressed transfer syntax (what pydicom 3 can use for it)."""

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"


def read_dataset(data: bytes, name: str) -> Any:
    """Parse DICOM bytes (with or without the preamble) into a pydicom Dataset; refuse non-DICOM bytes."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd tag of a forced read
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # a forced parse of arbitrary bytes fails in ways pydicom does not type
        raise DecodeError(
            f"{name}: not a readable DICOM file ({type(e).__name__}: {str(e)[:200]})",
            hint="re-export the file from the PACS, or convert it to PNG",
            path=name,
        ) from e
    return ds


_FIRST_GROUPS = (b"\x00\x00", b"\x02\x00", b"\x04\x00", b"\x08\x00", b"\x00\x08")


def might_be_dicom(head: bytes) -> bool:
    """Cheap test on a file's first bytes: the ``DICM`` preamble, or a first tag in a low group
    (0000, 0002, 0004, 0008, little or big endian) as old files without preamble start."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in _FIRST_GROUPS and head[3:4] == b"\x00"


def is_dicom_image(data: bytes) -> bool:
    """Content sniffing for files without the ``DICM`` preamble: a forced parse that yields pixel data."""
    if not might_be_dicom(data[:132]):
        return False
    try:
        ds = read_dataset(data, "<probe>")
    except DecodeError:
        return False
    try:
        return "PixelData" in ds and int(ds.get("Rows", 0) or 0) > 0 and int(ds.get("Columns", 0) or 0) > 0
    except Exception:  # a garbage dataset can fail while its elements are converted
        return False


def _ensure_transfer_syntax(ds: Any) -> str:
    """Old files have no file meta: infer the (uncompressed) transfer syntax from how the data was read."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    ts = meta.get("TransferSyntaxUID")
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    uid = _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _EXPLICIT_BE)
    meta.TransferSyntaxUID = uid
    return uid


def _int(ds: Any, keyword: str, default: int) -> int:
    v = ds.get(keyword, default)
    try:
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _check_header(ds: Any, name: str, limits: DecodeLimits) -> None:
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        raise DecodeError(
            f"{name}: DICOM file has no pixel data"
            + (f" (SOP class {getattr(kind, 'name', kind)})" if kind else "")
            + "; it is not an image",
            hint="pass the image instance (DX/CR radiograph), not a report or presentation state",
            path=name,
        )
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    frames = _int(ds, "NumberOfFrames", 1)
    if rows <= 0 or cols <= 0:
        raise DecodeError(f"{name}: DICOM Rows x Columns is {rows}x{cols}", hint="the header is corrupt")
    if rows * cols * max(frames, 1) > limits.max_pixels:
        raise DecodeError(
            f"{name}: {cols}x{rows}"
            + (f"x{frames} frames" if frames > 1 else "")
            + f" = {rows * cols * max(frames, 1)} pixels is over the {limits.max_pixels}-pixel limit",
            hint="downscale the image or raise the maximum pixel count",
            path=name,
        )
    if frames > 1:
        raise DecodeError(
            f"{name}: DICOM has {frames} frames; cxr classifies single-frame radiographs",
            hint="export the frame to classify as its own single-frame file",
            path=name,
        )


def _pixels(ds: Any, name: str, ts: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(ts) if ts in DECODER_HINTS else None
    if decoder is not None and not decoder.is_available:
        uid_name = getattr(decoder.UID, "name", ts)
        raise DecodeError(
            f"{name}: pixel data is compressed as {uid_name} ({ts}) and no installed package decodes it "
            f"(pydicom can use: {'; '.join(decoder.missing_dependencies)})",
            hint=DECODER_HINTS[ts],
            path=name,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except NotImplementedError as e:
        raise DecodeError(
            f"{name}: pydicom cannot decode transfer syntax {ts} ({str(e).splitlines()[0][:200]})",
            hint=DECODER_HINTS.get(
                ts, "convert the file to an uncompressed transfer syntax (dcmdjpeg, gdcmconv)"
            ),
            path=name,
        ) from e
    except RuntimeError as e:  # pydicom: "Unable to decompress ... plugins are missing dependencies"
        raise DecodeError(
            f"{name}: cannot decode the pixel data ({str(e).splitlines()[0][:200]})",
            hint=DECODER_HINTS.get(ts, "install pylibjpeg with its plugins, or python-gdcm"),
            path=name,
        ) from e
    except Exception as e:  # truncated or inconsistent pixel data raises assorted errors in pydicom/plugins
        raise DecodeError(
            f"{name}: corrupt or truncated DICOM pixel data ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            hint="re-export the file from the PACS",
            path=name,
        ) from e


def _voi_range(ds: Any, kind: str) -> tuple[float, float]:
    """The output range of the VOI transform that was applied (what black and white mean)."""
    from pydicom.pixels import apply_voi, apply_windowing

    if kind == "lut":
        desc = ds.VOILUTSequence[0].LUTDescriptor
        n, first = int(desc[0]) or 65536, int(desc[1])
        out = apply_voi(np.arange(first, first + n, dtype=np.int64), ds)
        return float(out.min()), float(out.max())
    with np.errstate(over="ignore"):
        out = apply_windowing(np.array([-1e30, 1e30], dtype=np.float64), ds)
    return float(out.min()), float(out.max())


def _monochrome_to_u8(arr: np.ndarray, ds: Any, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = _int(ds, "BitsStored", 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "VOI LUT on a float input array" after a rescale
            values = apply_modality_lut(arr, ds)
            modality_changed = values is not arr
            voi = "lut" if ds.get("VOILUTSequence") else None
            if voi is None and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
                voi = "window"
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True) if voi else values
            lo_hi = _voi_range(ds, voi) if voi else None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError) as e:
        raise DecodeError(
            f"{name}: invalid DICOM modality/VOI attributes ({type(e).__name__}: {str(e)[:200]})",
            hint="fix the window/LUT attributes, or export the image as PNG from the viewer",
            path=name,
        ) from e
    values = np.asarray(values, dtype=np.float64)
    if lo_hi is None:
        keep = (not modality_changed) and bits <= 8 and values.min() >= 0 and values.max() <= 255
        lo, hi = (0.0, 255.0) if keep else (float(np.nanmin(values)), float(np.nanmax(values)))
    else:
        lo, hi = lo_hi
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        values = (lo + hi) - values
    if hi <= lo:
        return scale_to_u8(values)
    out = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def _colour_to_u8(arr: np.ndarray, ds: Any, name: str) -> np.ndarray:
    from PIL import Image

    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DecodeError(f"{name}: unsupported DICOM colour layout {arr.shape}", path=name)
    if arr.dtype != np.uint8:
        arr = scale_to_u8(arr)
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr), mode="RGB").convert("L"), dtype=np.uint8)


def decode_dicom(data: bytes, name: str, limits: DecodeLimits) -> np.ndarray:
    """Decode a single-frame DICOM image to uint8 [H, W] (see the module docstring for the rules)."""
    if len(data) > limits.max_bytes:
        raise DecodeError(f"{name}: {len(data)} bytes is over the {limits.max_bytes}-byte limit", path=name)
    ds = read_dataset(data, name)
    _check_header(ds, name, limits)
    ts = _ensure_transfer_syntax(ds)
    arr = _pixels(ds, name, ts)
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples == 1 and photometric != "PALETTE COLOR":
        if arr.ndim != 2:
            raise DecodeError(f"{name}: expected one 2-D frame, pixel data has shape {arr.shape}", path=name)
        out = _monochrome_to_u8(arr, ds, name)
    else:
        out = _colour_to_u8(arr, ds, name)
    log.debug("decoded DICOM %s: %s %s -> %s", name, photometric, arr.dtype, out.shape)
    return out
