"""Every coded concept cxr writes into DICOM: standard ones (DCM, SCT, LOINC, UCUM, UMLS) and cxr's own.

cxr's classes, reason codes and result concepts live under ONE private coding scheme, ``99CXR`` (PS3.16
8.2: a designator starting with "99" is private). docs/dicom.md lists the table; a code value here never
changes meaning once written, new ones are only appended.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from cxr.errors import DataError
from cxr.imaging.gate import (
    DICOM_BODY_PART,
    DICOM_DESCRIPTION,
    DICOM_MODALITY,
    DICOM_VIEW_POSITION,
    NARROW_GREY_RANGE,
    OUT_OF_DISTRIBUTION,
)

SCHEME = "99CXR"
SCHEME_NAME = "cxr chest X-ray decision support"
SCHEME_VERSION = "1"

DISCLAIMER = "Decision support only, not a diagnosis"
"""The first sentence of ``cxr.labels.NOTICE``, written on its own into every SR and burned into every SC."""

# ---- standard concepts ----
PROCEDURE = Code("36554-4", "LN", "XR Chest Single view")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
UNIT = Code("1", "UCUM", "no units")  # a probability in 0..1 is dimensionless
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = Code("121106", "DCM", "Comment")


def _own(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


# ---- cxr's concepts (names of content items) ----
PREDICTED_CLASS = _own("CXR-PREDICTED", "Predicted class")
ABOVE_OPERATING_POINT = _own("CXR-ABOVE-OP", "Class above its operating point")
ASSESSABLE = _own("CXR-ASSESSABLE", "Assessable by the model")
NOT_ASSESSABLE_REASON = _own("CXR-REASON", "Reason not assessable")
NOTICE = _own("CXR-NOTICE", "Decision support notice")
MODEL_SHA256 = _own("CXR-MODEL-SHA256", "Model file SHA-256")
REASON_MESSAGE = _own("CXR-REASON-TEXT", "Reason not assessable, explained")

# ---- the classes (cxr.labels.CLASSES), as values and as probability measurements ----
CLASS_CODES: dict[str, Code] = {
    "COVID": _own("CXR-COVID", "cxr class COVID"),
    "Lung_Opacity": _own("CXR-LUNG-OPACITY", "cxr class Lung_Opacity"),
    "Normal": _own("CXR-NORMAL", "cxr class Normal"),
    "Viral Pneumonia": _own("CXR-VIRAL-PNA", "cxr class Viral Pneumonia"),
}
PROBABILITY_CODES: dict[str, Code] = {
    "COVID": _own("CXR-P-COVID", "Probability of class COVID"),
    "Lung_Opacity": _own("CXR-P-LUNG-OPAC", "Probability of class Lung_Opacity"),
    "Normal": _own("CXR-P-NORMAL", "Probability of class Normal"),
    "Viral Pneumonia": _own("CXR-P-VIRAL-PNA", "Probability of class Viral Pneumonia"),
}

# ---- the input gate's reason codes (cxr.imaging.gate) ----
REASON_CODES: dict[str, Code] = {
    DICOM_MODALITY: _own("CXR-R-MODALITY", "Modality is not CR or DX"),
    DICOM_BODY_PART: _own("CXR-R-BODY-PART", "Body part is not the chest"),
    DICOM_VIEW_POSITION: _own("CXR-R-VIEW", "View is not frontal (PA or AP)"),
    DICOM_DESCRIPTION: _own("CXR-R-DESCR", "Description names another body part"),
    OUT_OF_DISTRIBUTION: _own("CXR-R-OOD", "Unlike the training images"),
    NARROW_GREY_RANGE: _own("CXR-R-GREY-RANGE", "Narrow grey range"),
}
OTHER_REASON = _own("CXR-R-OTHER", "Other reason")
"""A reason code this table does not know yet (its text is still written beside it)."""


def class_code(name: str, table: dict[str, Code] = CLASS_CODES) -> Code:
    """The private code of one cxr class; a class outside ``cxr.labels.CLASSES`` is refused."""
    try:
        return table[name]
    except KeyError:
        raise DataError(
            f"class {name!r} has no DICOM code (known: {', '.join(table)})",
            hint="DICOM results are written for models trained on cxr.labels.CLASSES",
        ) from None


def reason_code(code: str) -> Code:
    """The private code of one reason code; ``OTHER_REASON`` for one this table does not know."""
    return REASON_CODES.get(code, OTHER_REASON)
