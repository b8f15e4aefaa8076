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

import functools
import warnings
from collections.abc import Sequence
from typing import Any

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    LanguageOfContentItemAndDescendants,
    Measurement,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    UIDRefContentItem,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence_item
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag

from cxr.dicom import _codes as c
from cxr.dicom._identity import ModelIdentity, device_uid, instance_uid, series_uid, tracking_uid
from cxr.dicom._source import building, source_header, written_as_is
from cxr.errors import DataError
from cxr.spec import Prediction

MANUFACTURER = "cxr"
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "cxr AI result (decision support, not a diagnosis)"
TRACKING_IDENTIFIER = "cxr whole-image result"
_CONTENT_SEQUENCE = Tag(0x0040, 0xA730)


def _name(result: Prediction, source: Dataset) -> str:
    return result.source or str(getattr(source, "filename", "") or "<dataset>")


def _evaluation_pairs(result: Prediction, label: str) -> list[tuple[Code, Code]]:
    """The qualitative evaluations as (concept, value): the predicted class, each class above its operating
    point, assessable yes/no, each reason code."""
    out = [(c.PREDICTED_CLASS, c.class_code(label))]
    for name, above in (result.above_operating_point or {}).items():
        if above:
            out.append((c.ABOVE_OPERATING_POINT, c.class_code(name)))
    if result.assessable is not None:
        out.append((c.ASSESSABLE, c.YES if result.assessable else c.NO))
    out.extend((c.NOT_ASSESSABLE_REASON, c.reason_code(r.code)) for r in result.reasons)
    return out


def _observation(model: ModelIdentity) -> ObservationContext:
    """TID 1001: the model as the device observer."""
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
    return ObservationContext(observer_device_context=device)


def algorithm_identification(model: ModelIdentity) -> AlgorithmIdentification:
    """TID 4019: the model file's name, cxr's version, its SHA-256 and model id as parameters."""
    return AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"sha256={model.sha256}", f"model_id={model.model_id}"],
        manufacturer=MANUFACTURER,
    )


def _group_encoded(
    header: Dataset,
    result: Prediction,
    label: str,
    model: ModelIdentity,
    sop_uid: str,
    encodings: tuple[str, ...],
) -> bytes:
    """TID 1501, encoded: the measurement group about the whole source image, its items in the order of
    highdicom's ``MeasurementsAndQualitativeEvaluations`` (tracking identifier and UID, the algorithm, the
    probabilities, the evaluations, the source image). Items that repeat from report to report (the
    tracking identifier, the algorithm, each evaluation) are encoded once; the rest are built per report."""
    tracking = UIDRefContentItem(
        name=codes.DCM.TrackingUniqueIdentifier,
        value=tracking_uid(sop_uid),
        relationship_type=RelationshipTypeValues.HAS_OBS_CONTEXT,
    )
    probabilities = [
        Measurement(name=c.class_code(name, c.PROBABILITY_CODES), value=float(p), unit=c.UNIT)
        for name, p in result.probabilities.items()
    ]
    items = b"".join(
        (
            _tracking_identifier_encoded(encodings),
            _encoded([tracking], encodings),
            _algorithm_encoded(model, encodings),
            _encoded([item for m in probabilities for item in m], encodings),
            *(
                _evaluation_encoded(concept, value, encodings)
                for concept, value in _evaluation_pairs(result, label)
            ),
            _encoded([SourceImageForMeasurementGroup.from_source_image(header)], encodings),
        )
    )
    return _container_encoded(codes.DCM.MeasurementGroup, items, encodings, template_id="1501")


def _encoded_sequence(items: bytes) -> RawDataElement:
    """A Content Sequence whose ``items`` are already encoded (Explicit VR Little Endian), written as they are."""
    return RawDataElement(_CONTENT_SEQUENCE, "SQ", len(items), items, 0, False, True)


def _container_encoded(
    name: Code, items: bytes, encodings: tuple[str, ...], template_id: str | None = None
) -> bytes:
    """A CONTAINS container of already encoded ``items``, encoded."""
    container = ContainerContentItem(
        name=name, relationship_type=RelationshipTypeValues.CONTAINS, template_id=template_id
    )
    container[_CONTENT_SEQUENCE] = _encoded_sequence(items)
    written_as_is(container)  # else the writer decodes the encoded items to encode them again
    return _encoded([container], encodings)


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
        # the constructor is given the root without its items: it deep-copies, re-parses and searches the whole
        # tree it is given (more work than building it), and the evidence it derives is the same either way
        root = ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
        root.ContentSequence = ContentSequence()  # its items are added encoded, below
        sr = ComprehensiveSR(evidence=[header], content=root, **_document(header, model, sop_uid))
        # the same elements, without the highdicom object's parsed ``content`` (the bare root)
        out = Dataset(sr)
        out.preamble, out.file_meta = sr.preamble, sr.file_meta
        encodings = written_as_is(out)
        group = _group_encoded(header, result, result.label, model, sop_uid, encodings)
        items = b"".join(
            (
                _report_opening(model, encodings),
                _container_encoded(codes.DCM.ImagingMeasurements, group, encodings),
                _texts_encoded(report_texts(result, model), encodings),
            )
        )
    out[_CONTENT_SEQUENCE] = _encoded_sequence(items)
    return out


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


@functools.lru_cache(maxsize=16)
def _report_opening(model: ModelIdentity, encodings: tuple[str, ...]) -> bytes:
    """The report's root items before the measurements, encoded: the language, the observation context and the
    procedure reported, as highdicom's ``MeasurementReport`` orders them. They are the same in every report of a
    model, so they are built and encoded once (tests/test_dicom_objects.py proves the document byte for byte
    equal to highdicom's build of the whole report, but for the creation times)."""
    procedure = CodeContentItem(
        name=codes.DCM.ProcedureReported,
        value=c.PROCEDURE,
        relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
    )
    opening = [*LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE), *_observation(model), procedure]
    return _encoded(opening, encodings)


@functools.lru_cache(maxsize=16)
def _algorithm_encoded(model: ModelIdentity, encodings: tuple[str, ...]) -> bytes:
    return _encoded(list(algorithm_identification(model)), encodings)


@functools.lru_cache(maxsize=64)
def _evaluation_encoded(concept: Code, value: Code, encodings: tuple[str, ...]) -> bytes:
    return _encoded(list(QualitativeEvaluation(concept, value)), encodings)


@functools.lru_cache(maxsize=8)
def _tracking_identifier_encoded(encodings: tuple[str, ...]) -> bytes:
    return _encoded(
        [
            TextContentItem(
                codes.DCM.TrackingIdentifier, TRACKING_IDENTIFIER, RelationshipTypeValues.HAS_OBS_CONTEXT
            )
        ],
        encodings,
    )


@functools.lru_cache(maxsize=64)
def _texts_encoded(texts: tuple[str, ...], encodings: tuple[str, ...]) -> bytes:
    """TID 1500 row 12, encoded: the Qualitative Evaluations container with one TEXT item per text (the
    disclaimer, the notice, the model's SHA-256, each reason's explanation); repeats from report to report."""
    return _encoded([texts_container(texts)], encodings)


def texts_container(texts: Sequence[str]) -> ContainerContentItem:
    """The Qualitative Evaluations container of ``report_texts``: a TEXT item for each, named in their order
    (the disclaimer NOTICE, the full notice COMMENT, the model's MODEL_SHA256, then each REASON_MESSAGE)."""
    names = (c.NOTICE, c.COMMENT, c.MODEL_SHA256)
    container = ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(
        [
            TextContentItem(
                names[i] if i < len(names) else c.REASON_MESSAGE, text, RelationshipTypeValues.CONTAINS
            )
            for i, text in enumerate(texts)
        ]
    )
    return container


def report_texts(result: Prediction, model: ModelIdentity) -> tuple[str, ...]:
    """The document's texts: the disclaimer on its own, the full notice, the model's SHA-256, each reason's
    explanation."""
    return (c.DISCLAIMER, result.notice, model.sha256, *(f"{r.code}: {r.message}" for r in result.reasons))


def _encoded(items: Sequence[Dataset], encodings: tuple[str, ...]) -> bytes:
    """``items`` as the items of a sequence, Explicit VR Little Endian, as pydicom's writer encodes them."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    for item in items:
        write_sequence_item(fp, item, list(encodings))
    return fp.getvalue()
