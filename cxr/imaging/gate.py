"""Takes a DICOM file's bytes (or a pydicom Dataset); makes the header reasons it is not a frontal chest radiograph.

Rules (each a reason code; an absent or empty attribute never refuses, since many real files leave them out):
- ``dicom_modality``: Modality is not CR or DX (DICOM PS3.3 C.7.3.1.1.1: CR computed radiography, DX digital
  radiography; "DR" is no standard code, so it is refused like CT or MR);
- ``dicom_body_part``: BodyPartExamined is not the chest (CHEST as PS3.16 CID 4031 spells it; THORAX, LUNG,
  and CHEST_* variants, which real files carry, count as chest);
- ``dicom_view_position``: ViewPosition is not PA or AP (a lateral LL/RL, a decubitus, an oblique...);
- ``dicom_description``: Study/Series Description names another body part (TEETH, KNEE, HAND...): the only
  sign in old files like the dental CR in ../shared/data/dicom, which has no BodyPartExamined.
Values seen in ../shared/data/dicom: the four chest files are CR or DX with CHEST/PA or nothing; the dental
file is CR with no body part or view and the series description "MODALITYLUT - TEETH". Only the header is
read (``stop_before_pixels``); bytes that are not DICOM, or a header pydicom cannot parse, give no reasons
(decoding reports that file's error on its own).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

DICOM_MODALITY = "dicom_modality"
DICOM_BODY_PART = "dicom_body_part"
DICOM_VIEW_POSITION = "dicom_view_position"
DICOM_DESCRIPTION = "dicom_description"

MODALITIES = frozenset({"CR", "DX"})
CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
OTHER_ANATOMY = (
    "TEETH", "TOOTH", "DENTAL", "JAW", "MANDIBLE", "SKULL", "HEAD", "BRAIN", "SPINE", "PELVIS", "HIP", "KNEE",
    "LEG", "FOOT", "ANKLE", "HAND", "WRIST", "ELBOW", "ARM", "SHOULDER", "ABDOMEN", "BREAST", "MAMMO",
)  # fmt: skip
_OTHER = re.compile(r"\b(" + "|".join(OTHER_ANATOMY) + r")S?\b")


@dataclass(frozen=True)
class GateReason:
    code: str
    message: str


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    return "" if value is None else str(value).strip().upper()


def dicom_header_reasons(ds: Any) -> tuple[GateReason, ...]:
    """The reasons (see the module docstring) a pydicom Dataset's header gives; () for a frontal chest."""
    out: list[GateReason] = []
    modality = _text(ds, "Modality")
    if modality and modality not in MODALITIES:
        out.append(
            GateReason(DICOM_MODALITY, f"DICOM Modality is {modality!r}; cxr reads radiographs (CR or DX)")
        )
    part = _text(ds, "BodyPartExamined")
    if part and part not in CHEST_PARTS and not part.startswith("CHEST"):
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
        found = _OTHER.search(_text(ds, keyword))
        if found:
            out.append(
                GateReason(
                    DICOM_DESCRIPTION,
                    f"DICOM {keyword} {_text(ds, keyword)!r} names {found.group(1)}, not the chest",
                )
            )
            break
    return tuple(out)


def dicom_file_reasons(data: bytes, name: str = "<bytes>") -> tuple[GateReason, ...]:
    """The header reasons of DICOM bytes; () for anything that is not DICOM or cannot be parsed."""
    from cxr.imaging.dicom import might_be_dicom

    if not might_be_dicom(data[:256]):
        return ()
    import pydicom

    try:
        with warnings.catch_warnings():  # a broken header warns before it fails; the result says enough
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # pydicom raises many kinds for broken headers; decoding reports the file itself
        return ()
    return dicom_header_reasons(ds)
