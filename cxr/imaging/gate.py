"""Takes a DICOM file's bytes (or a pydicom Dataset); makes the header reasons it is not a frontal chest radiograph.

Reason codes (an absent, empty or unconvertible attribute never refuses): ``dicom_modality`` (not CR or DX),
``dicom_body_part`` (BodyPartExamined not CHEST, THORAX, TORAX, LUNG(S) or CHEST plus a separator such as
"CHEST_PA"), ``dicom_view_position`` (not PA or AP) and ``dicom_description`` (Study/SeriesDescription names
another body part and not the chest). Only the header is read; bytes that are not DICOM or cannot be parsed
give no reasons. Neither function raises.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DICOM_MODALITY = "dicom_modality"
DICOM_BODY_PART = "dicom_body_part"
DICOM_VIEW_POSITION = "dicom_view_position"
DICOM_DESCRIPTION = "dicom_description"
REASON_CODES = (DICOM_MODALITY, DICOM_BODY_PART, DICOM_VIEW_POSITION, DICOM_DESCRIPTION)

MODALITIES = frozenset({"CR", "DX"})
CHEST_PARTS = frozenset({"CHEST", "THORAX", "TORAX", "LUNG", "LUNGS"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
OTHER_ANATOMY = (
    "TEETH", "TOOTH", "DENTAL", "JAW", "MANDIBLE", "SKULL", "HEAD", "BRAIN", "SPINE", "PELVIS", "HIP", "KNEE",
    "LEG", "FOOT", "ANKLE", "HAND", "WRIST", "ELBOW", "ARM", "SHOULDER", "ABDOMEN", "BREAST", "MAMMO",
)  # fmt: skip
_OTHER = re.compile(r"\b(" + "|".join(OTHER_ANATOMY) + r")S?\b")
_CHEST_WORD = re.compile(r"\b(CHEST|THORAX|TORAX|LUNGS?)\b")
_CHEST_PART = re.compile(r"CHEST[\s_\-/\\^.,]")


@dataclass(frozen=True)
class GateReason:
    """One reason a header is not a frontal chest radiograph: a stable ``code`` and a ``message`` for people."""

    code: str
    message: str


def _text(ds: Any, keyword: str) -> str:
    """The attribute as upper-case text; "" when absent, empty, or not convertible (a broken element)."""
    try:
        with warnings.catch_warnings():  # pydicom warns while it converts odd raw values
            warnings.simplefilter("ignore")
            value = ds.get(keyword, None)
            return "" if value is None else str(value).strip().upper()
    except Exception:  # lazy conversion of a corrupt raw element raises assorted pydicom errors
        return ""


def dicom_header_reasons(ds: Any) -> tuple[GateReason, ...]:
    """The reasons (see the module docstring) a pydicom Dataset's header gives; () for a frontal chest."""
    out: list[GateReason] = []
    modality = _text(ds, "Modality")
    if modality and modality not in MODALITIES:
        out.append(
            GateReason(DICOM_MODALITY, f"DICOM Modality is {modality!r}; cxr reads radiographs (CR or DX)")
        )
    part = _text(ds, "BodyPartExamined")
    if part and part not in CHEST_PARTS and not _CHEST_PART.match(part):
        out.append(
            GateReason(DICOM_BODY_PART, f"DICOM BodyPartExamined is {part!r}; cxr reads the chest (CHEST)")
        )
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        out.append(
            GateReason(
                DICOM_VIEW_POSITION,
                f"DICOM ViewPosition is {view!r}; cxr reads frontal views (PA or AP) only",
            )
        )
    for keyword in ("StudyDescription", "SeriesDescription"):
        text = _text(ds, keyword)
        found = _OTHER.search(text)
        if found and not _CHEST_WORD.search(text):
            out.append(
                GateReason(
                    DICOM_DESCRIPTION,
                    f"DICOM {keyword} {text!r} names {found.group(1)}; cxr reads the chest (CHEST)",
                )
            )
            break
    return tuple(out)


def dicom_file_reasons(data: bytes, name: str = "<bytes>") -> tuple[GateReason, ...]:
    """The header reasons of DICOM bytes; () for anything that is not DICOM or cannot be parsed."""
    from cxr.imaging.dicom import might_be_dicom

    if not might_be_dicom(bytes(data[:256])):
        return ()
    import pydicom

    try:
        with warnings.catch_warnings():  # a broken header warns before it fails; the result says enough
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return dicom_header_reasons(ds)
    except Exception as e:  # pydicom raises many kinds for broken headers; decoding reports the file itself
        log.debug("%s: DICOM header not checked (%s: %s)", name, type(e).__name__, str(e)[:200])
        return ()
