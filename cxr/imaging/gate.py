"""The input gate's rules: why an image is not assessable, from its DICOM header, its pixels or its OOD score.

Header (a DICOM file's bytes or a pydicom Dataset): why it is not a frontal chest radiograph.

Reason codes (an absent, empty or unconvertible attribute never refuses): ``dicom_modality`` (not CR or DX),
``dicom_body_part`` (BodyPartExamined not CHEST, THORAX, TORAX, LUNG(S) or CHEST plus a separator such as
"CHEST_PA"), ``dicom_view_position`` (not PA or AP) and ``dicom_description`` (Study/SeriesDescription names
another body part and not the chest). Only the header is read; bytes that are not DICOM or cannot be parsed
give no reasons.

Pixels: ``narrow_grey_range`` (1st-99th percentile spread under ``MIN_GREY_RANGE``). Score:
``out_of_distribution`` (the fused graph's ``ood_score`` above the card's threshold, ``cxr.fuse.ood``).
No rule raises; each gives a ``cxr.spec.Reason`` or nothing.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from typing import Any

import numpy as np

from cxr.spec import CARD_OOD, Reason

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


def _text(ds: Any, keyword: str) -> str:
    """The attribute as upper-case text; "" when absent, empty, or not convertible (a broken element)."""
    try:
        with warnings.catch_warnings():  # pydicom warns while it converts odd raw values
            warnings.simplefilter("ignore")
            value = ds.get(keyword, None)
            return "" if value is None else str(value).strip().upper()
    except Exception:  # lazy conversion of a corrupt raw element raises assorted pydicom errors
        return ""


def dicom_header_reasons(ds: Any) -> tuple[Reason, ...]:
    """The reasons (see the module docstring) a pydicom Dataset's header gives; () for a frontal chest."""
    out: list[Reason] = []
    modality = _text(ds, "Modality")
    if modality and modality not in MODALITIES:
        out.append(
            Reason(DICOM_MODALITY, f"DICOM Modality is {modality!r}; cxr reads radiographs (CR or DX)")
        )
    part = _text(ds, "BodyPartExamined")
    if part and part not in CHEST_PARTS and not _CHEST_PART.match(part):
        out.append(
            Reason(DICOM_BODY_PART, f"DICOM BodyPartExamined is {part!r}; cxr reads the chest (CHEST)")
        )
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        out.append(
            Reason(
                DICOM_VIEW_POSITION,
                f"DICOM ViewPosition is {view!r}; cxr reads frontal views (PA or AP) only",
            )
        )
    for keyword in ("StudyDescription", "SeriesDescription"):
        text = _text(ds, keyword)
        found = _OTHER.search(text)
        if found and not _CHEST_WORD.search(text):
            out.append(
                Reason(
                    DICOM_DESCRIPTION,
                    f"DICOM {keyword} {text!r} names {found.group(1)}; cxr reads the chest (CHEST)",
                )
            )
            break
    return tuple(out)


def dicom_file_reasons(data: bytes, name: str = "<bytes>") -> tuple[Reason, ...]:
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


OUT_OF_DISTRIBUTION = "out_of_distribution"
NARROW_GREY_RANGE = "narrow_grey_range"
MIN_GREY_RANGE = 48


def grey_range_reason(gray: np.ndarray) -> Reason | None:
    """``narrow_grey_range`` when the 1st-99th percentile spread of ``gray`` is below ``MIN_GREY_RANGE``."""
    lo, hi = np.percentile(gray, [1, 99])
    spread = float(hi - lo)
    if spread >= MIN_GREY_RANGE:
        return None
    return Reason(
        NARROW_GREY_RANGE,
        f"the image spans only {spread:.0f} grey levels (1st-99th percentile; radiographs span 84 or more): "
        "likely a wrong window/level or an overexposed or blank image; re-export it with its proper window",
    )


def ood_threshold(card: Any) -> float | None:
    """The out-of-distribution threshold a model card records, or None (no score in the graph)."""
    ood = card.get(CARD_OOD) if hasattr(card, "get") else None
    try:
        return float(ood["threshold"]) if ood else None
    except (KeyError, TypeError, ValueError):
        log.warning("the model card's out-of-distribution entry has no usable threshold: ignoring it")
        return None


def ood_reason(score: float, threshold: float | None) -> Reason | None:
    """``out_of_distribution`` when ``score`` is above ``threshold``."""
    if threshold is None or not score > threshold:
        return None
    return Reason(
        OUT_OF_DISTRIBUTION,
        f"unlike the images the model was trained on (out-of-distribution score {score:.3g} > {threshold:.3g}, "
        "the threshold fitted on held-out radiographs): check that this is a frontal chest radiograph, "
        "correctly windowed and not inverted",
    )
