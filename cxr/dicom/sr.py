"""Takes the source image's Dataset, its ``Prediction`` and the model; makes a Comprehensive SR (TID 1500).

The document (content tree in docs/dicom.md): an Imaging Measurement Report about the whole image, with
- the observation context: the model as the device observer (UID from its SHA-256, name and manufacturer
  "cxr", model name = the model file's name, serial number = its short model id);
- procedure reported: LOINC 36554-4 "XR Chest Single view" (no image library: highdicom's TID 1603 entry
  needs Patient Orientation and Imager Pixel Spacing, which real chest files leave out);
- one measurement group (TID 1501) that references the source image, identifies the algorithm (TID 4019:
  model file name, cxr version, "sha256=<hex>" and "model_id=<id>" as parameters) and holds the predicted
  class, each class above its operating point, assessable yes/no and each reason code as qualitative
  evaluations, and every class probability as a measurement (UCUM "1");
- a Qualitative Evaluations container (TID 1500 row 12) with TEXT items: the disclaimer sentence on its own,
  the full notice, the model's SHA-256, and each reason's explanation.
It sits in the source's study, in cxr's SR series for that study (UIDs: ``cxr.dicom._identity``), is marked
COMPLETE, UNVERIFIED and PRELIMINARY (a clinician has not read it), describes the private scheme in its Coding
Scheme Identification Sequence, and is encoded Explicit VR Little Endian.
A failed prediction (``result.ok`` False) has nothing to report and is refused with a ``DataError``.
"""

from __future__ import annotations

import warnings
from typing import Any

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr.dicom import _codes as c
from cxr.dicom._identity import ModelIdentity, device_uid, instance_uid, series_uid, tracking_uid
from cxr.dicom._source import building, source_header
from cxr.errors import DataError
from cxr.spec import Prediction

MANUFACTURER = "cxr"
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "cxr AI result (decision support, not a diagnosis)"


def _name(result: Prediction, source: Dataset) -> str:
    return result.source or str(getattr(source, "filename", "") or "<dataset>")


def _evaluations(result: Prediction, label: str) -> list[QualitativeEvaluation]:
    out = [QualitativeEvaluation(c.PREDICTED_CLASS, c.class_code(label))]
    for label, above in (result.above_operating_point or {}).items():
        if above:
            out.append(QualitativeEvaluation(c.ABOVE_OPERATING_POINT, c.class_code(label)))
    if result.assessable is not None:
        out.append(QualitativeEvaluation(c.ASSESSABLE, c.YES if result.assessable else c.NO))
    out.extend(QualitativeEvaluation(c.NOT_ASSESSABLE_REASON, c.reason_code(r.code)) for r in result.reasons)
    return out


def _measurements(result: Prediction) -> list[Measurement]:
    return [
        Measurement(name=c.class_code(label, c.PROBABILITY_CODES), value=float(p), unit=c.UNIT)
        for label, p in result.probabilities.items()
    ]


def _texts(result: Prediction, model: ModelIdentity) -> ContainerContentItem:
    """TID 1500 row 12: the document-level Qualitative Evaluations container with the TEXT items."""
    items: list[TextContentItem] = [
        TextContentItem(c.NOTICE, c.DISCLAIMER, RelationshipTypeValues.CONTAINS),
        TextContentItem(c.COMMENT, result.notice, RelationshipTypeValues.CONTAINS),
        TextContentItem(c.MODEL_SHA256, model.sha256, RelationshipTypeValues.CONTAINS),
    ]
    items.extend(
        TextContentItem(c.REASON_MESSAGE, f"{r.code}: {r.message}", RelationshipTypeValues.CONTAINS)
        for r in result.reasons
    )
    container = ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(items)
    return container


def _report(
    header: Dataset, result: Prediction, label: str, model: ModelIdentity, sop_uid: str
) -> MeasurementReport:
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model.name,
            serial_number=model.model_id,
        ),
    )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid(sop_uid), identifier="cxr whole-image result"
        ),
        algorithm_id=AlgorithmIdentification(
            name=model.name,
            version=model.version,
            parameters=[f"sha256={model.sha256}", f"model_id={model.model_id}"],
            manufacturer=MANUFACTURER,
        ),
        measurements=_measurements(result),
        qualitative_evaluations=_evaluations(result, label),
        source_images=[SourceImageForMeasurementGroup.from_source_image(header)],
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=c.PROCEDURE,
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_texts(result, model))
    return report


def build_sr(source: Dataset, result: Prediction, model: ModelIdentity) -> Dataset:
    """The Comprehensive SR of ``result`` for the image ``source`` (see the module docstring)."""
    name = _name(result, source)
    return sr_from_header(source_header(source, name), result, model, name)


def sr_from_header(header: Dataset, result: Prediction, model: ModelIdentity, name: str) -> Dataset:
    """``build_sr`` for a header already checked and repaired by ``source_header`` (made once per source)."""
    if not result.ok or result.label is None:
        raise DataError(
            f"{name}: the prediction failed ({result.error}); there is no result to write as a DICOM SR",
            hint="fix the input (see the error) and predict it again",
            path=name,
        )
    sop_uid = instance_uid(header.SOPInstanceUID, model, "sr")
    with warnings.catch_warnings(), building(name, "SR"):
        warnings.simplefilter("ignore", UserWarning)  # highdicom's person-name style hints on copied names
        report = _report(header, result, result.label, model, sop_uid)
        sr = ComprehensiveSR(
            evidence=[header], content=_bare_root(report[0]), **_document(header, model, sop_uid)
        )
    return _with_content(sr, report[0])


def _document(header: Dataset, model: ModelIdentity, sop_uid: str) -> dict[str, Any]:
    """The document-level arguments of ``ComprehensiveSR`` (all but the evidence and the content)."""
    return {
        "series_instance_uid": series_uid(header.StudyInstanceUID, model, "sr"),
        "series_number": SR_SERIES_NUMBER,
        "sop_instance_uid": sop_uid,
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,
        "series_description": SR_SERIES_DESCRIPTION,
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
        "coding_schemes": [
            CodingSchemeIdentificationItem(
                designator=c.SCHEME,
                name=c.SCHEME_NAME,
                version=c.SCHEME_VERSION,
                responsible_organization=MANUFACTURER,
            )
        ],
    }


def _bare_root(root: Dataset) -> Dataset:
    """The report's root container without its children: what ``ComprehensiveSR`` is given.

    highdicom's SR constructor deep-copies and re-parses the whole content tree it is given, and searches it
    for references, which costs more than building the tree did. The tree was already made and checked by
    highdicom's TID 1500 classes in ``_report``, and the evidence sequence the constructor derives lists every
    evidence instance whether the tree references it or not, so the document is built around the bare root and
    then given the report's children: tests/test_dicom_objects.py proves the result byte for byte equal to
    highdicom's build from the whole tree (but for the creation times).
    """
    bare = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            bare.add(elem)
    bare.ContentSequence = []
    return bare


def _with_content(sr: Dataset, root: Dataset) -> Dataset:
    """``sr`` as a plain pydicom Dataset whose root content items are ``root``'s, as highdicom copies them."""
    out = Dataset(sr)  # the same elements, without the highdicom object's parsed ``content`` (the bare root)
    out.preamble, out.file_meta = sr.preamble, sr.file_meta
    for tag, value in root.items():
        out[tag] = value
    return out
