"""Takes an SR that ``build_sr`` wrote (a pydicom Dataset, e.g. as a PACS returns it); makes ``SrContent``, the
result it carries, so a test or a node can compare what reached the PACS with ``cxr-predict`` on the same file.
Reads only cxr's own codes (``cxr.dicom._codes``); an SR without them is refused with a ``DataError``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cxr.dicom import _codes as c
from cxr.errors import DataError
from cxr.runtime.types import Reason


@dataclass(frozen=True)
class SrContent:
    """What one cxr SR says: the class, every probability, the operating points, the gate, the model."""

    label: str
    probabilities: Mapping[str, float]
    above_operating_point: tuple[str, ...]
    assessable: bool | None
    reasons: tuple[Reason, ...]
    model_sha256: str
    disclaimer: str


def _items(ds: Any) -> Iterator[Any]:
    for item in ds.get("ContentSequence", None) or ():
        yield item
        yield from _items(item)


def _is(item: Any, code: Any) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return bool(name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator)


def read_sr(ds: Any) -> SrContent:
    """The result a cxr SR carries (see the module docstring)."""
    by_value = {code.value: label for label, code in c.CLASS_CODES.items()}
    by_probability = {code.value: label for label, code in c.PROBABILITY_CODES.items()}
    label, assessable, sha, disclaimer = None, None, "", ""
    probabilities: dict[str, float] = {}
    above: list[str] = []
    reasons: list[Reason] = []
    for item in _items(ds):
        names = item.get("ConceptNameCodeSequence", None) or ()
        if not names or names[0].CodingSchemeDesignator != c.SCHEME:
            continue
        value = item.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in item else None
        if names[0].CodeValue in by_probability:
            probabilities[by_probability[names[0].CodeValue]] = float(
                item.MeasuredValueSequence[0].NumericValue
            )
        elif _is(item, c.PREDICTED_CLASS):
            label = by_value.get(str(value))
        elif _is(item, c.ABOVE_OPERATING_POINT):
            above.append(by_value.get(str(value), str(value)))
        elif _is(item, c.ASSESSABLE):
            assessable = value == c.YES.value
        elif _is(item, c.REASON_MESSAGE):
            code, _, message = str(item.TextValue).partition(": ")
            reasons.append(Reason(code, message))
        elif _is(item, c.MODEL_SHA256):
            sha = str(item.TextValue)
        elif _is(item, c.NOTICE):
            disclaimer = str(item.TextValue)
    if label is None or not probabilities:
        raise DataError(
            f"SR {ds.get('SOPInstanceUID', '?')} carries no cxr result (no {c.SCHEME} predicted class or "
            "probabilities)",
            hint="read an SR that cxr wrote (Manufacturer 'cxr', series 9901)",
        )
    return SrContent(label, probabilities, tuple(above), assessable, tuple(reasons), sha, disclaimer)
