"""Takes an input item and a result; makes the input gate's verdict: ``assessable`` and the reasons why not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr.spec import CARD_OOD, Prediction, Reason

log = logging.getLogger(__name__)

MEMBERS_DISAGREE = "members_disagree"
HEAD_BYTES = 256
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def _dicom_bytes(item: Any) -> tuple[bytes, str] | None:
    """The whole file when ``item`` looks like DICOM (preamble, suffix or an old file's first tag), else None."""
    from cxr.imaging.dicom import might_be_dicom

    if isinstance(item, bytes | bytearray):
        data = bytes(item)
        return (data, "<bytes>") if might_be_dicom(data[:HEAD_BYTES]) else None
    if isinstance(item, Path | str):
        path = Path(item)
        try:
            with path.open("rb") as f:
                head = f.read(HEAD_BYTES)
            if path.suffix.lower() in DICOM_SUFFIXES or might_be_dicom(head):
                return path.read_bytes(), str(path)
        except OSError:  # decoding reports an unreadable file; the gate has nothing to add
            return None
    return None


def header_reasons(item: Any) -> tuple[Reason, ...]:
    """Reasons from the DICOM header of ``item`` (none for other formats, arrays, or a header it cannot read)."""
    try:
        from cxr.imaging.gate import dicom_file_reasons

        found = _dicom_bytes(item)
        if found is None:
            return ()
        return tuple(Reason(r.code, r.message) for r in dicom_file_reasons(*found))
    except Exception:  # the gate must never cost a result: decoding already checked what matters
        log.debug(
            "could not check the DICOM header of %r", item if not isinstance(item, bytes) else "<bytes>"
        )
        return ()


def disagreement_reason(member_probabilities: np.ndarray, label: int) -> Reason | None:
    """``members_disagree`` when fewer than half of the M members' top classes equal ``label``."""
    tops = np.asarray(member_probabilities).argmax(axis=-1)
    agree, m = int(np.sum(tops == label)), int(tops.size)
    if m == 0 or 2 * agree >= m:
        return None
    return Reason(
        MEMBERS_DISAGREE,
        f"only {agree} of {m} members give the ensemble's class as their top class: review the image before "
        "relying on the result",
    )


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
        "the 99th percentile of its validation radiographs): check that this is a frontal chest radiograph, "
        "correctly windowed and not inverted",
    )


def with_reasons(pred: Prediction, reasons: Sequence[Reason | None]) -> Prediction:
    """``pred`` with ``reasons`` added (``None`` entries skipped); any reason makes it not assessable."""
    extra = tuple(r for r in reasons if r is not None)
    if not extra or not pred.ok:
        return pred
    return replace(pred, assessable=False, reasons=pred.reasons + extra)
