"""DICOM results (cxr.dicom): the SR and SC made for hand-made Predictions, on a tiny dataset built here and on
the real files of ../shared/data/dicom (skipped when absent). Checks identity copying, the deterministic UIDs,
the SR's content, the SC's pixels, dciodvfy (no error the source does not already have) and refusals."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from cxr.dicom import (
    DISCLAIMER,
    SCHEME,
    ModelIdentity,
    _codes,
    build_sc,
    build_sr,
    dicom_results,
    read_sr,
    write_dicom_results,
)
from cxr.dicom._source import TYPE2
from cxr.errors import DataError, DecodeError
from cxr.imaging.gate import NARROW_GREY_RANGE, OUT_OF_DISTRIBUTION, REASON_CODES
from cxr.labels import CLASSES, NOTICE
from cxr.spec import Prediction
from tests.conftest import SHARED_DATA
from tests.dicom_factory import ASSESSABLE, MODEL, NOT_ASSESSABLE, RGB, make_source

REAL = sorted((SHARED_DATA / "dicom").glob("*.dcm")) if (SHARED_DATA / "dicom").is_dir() else []
DCIODVFY = shutil.which("dciodvfy")
OTHER_MODEL = ModelIdentity("tiny_fused.onnx", "0.1.0", "cd" * 32, "cdcdcdcdcdcdcdcd")
IDENTITY = (*TYPE2, "StudyInstanceUID", "SpecificCharacterSet")


TINY = {
    "tiny-utf8": lambda: make_source(),
    "tiny-old-no-meta": lambda: make_source(
        file_meta=False,
        SOPInstanceUID="1.2.826.0.1.3680043.8.498.11",
        SpecificCharacterSet=None,
        PatientName="Doe^John",
        PatientAge="81",
        StudyDate="1995.07.20",
        StudyTime=None,
        PatientSex=None,
        AccessionNumber=None,
        BodyPartExamined=None,
    ),
}
SOURCES = [pytest.param(k, id=k) for k in TINY] + (
    [pytest.param(str(p), id=p.name) for p in REAL]
    or [
        pytest.param(
            "", marks=pytest.mark.skip(reason=f"real DICOM files not found in {SHARED_DATA / 'dicom'}")
        )
    ]
)


def source_bytes(key: str) -> bytes:
    return TINY[key]() if key in TINY else Path(key).read_bytes()


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def content_items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(ds: Dataset, code: Any) -> list[Dataset]:
    return [
        i for i in content_items(ds) if i.ConceptNameCodeSequence[0].CodeValue == code.value
        and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == code.scheme_designator
    ]  # fmt: skip


def expected(src: Dataset, keyword: str) -> str:
    """The source's value, or its documented repair (old ACR-NEMA dates and times lose their separators)."""
    value = str(src.get(keyword, ""))
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", value) or re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
        return value.replace(".", "").replace(":", "")
    return value


@pytest.mark.parametrize("key", SOURCES)
@pytest.mark.parametrize("result", [ASSESSABLE, NOT_ASSESSABLE], ids=["assessable", "not-assessable"])
def test_identity_is_copied_and_both_objects_sit_in_the_source_study(key: str, result: Prediction) -> None:
    src = read(source_bytes(key))
    out = dicom_results(source_bytes(key), result, RGB, MODEL)
    for ds in (out.sr, out.sc):
        for keyword in IDENTITY:
            if keyword in TYPE2:
                assert keyword in ds, keyword  # type 2: present, empty when the source lacks it
            assert str(ds.get(keyword, "")) == expected(src, keyword), keyword
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.sr.Modality == "SR" and out.sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    evidence = out.sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert out.sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_imperfect_values_are_repaired_as_documented() -> None:
    out = dicom_results(TINY["tiny-old-no-meta"](), ASSESSABLE, RGB, MODEL)
    for ds in (out.sr, out.sc):
        assert ds.PatientAge == "081Y" and ds.StudyDate == "19950720"
        assert ds.PatientBirthDate == "" and ds.PatientSex == "" and ds.StudyTime == ""
        assert "SpecificCharacterSet" not in ds
    bad = make_source(PatientSex="MALE", PatientAge="eighty")
    sr = build_sr(read(bad), ASSESSABLE, MODEL)
    assert sr.PatientSex == "" and "PatientAge" not in sr


@pytest.mark.parametrize("key", SOURCES)
def test_uids_are_valid_and_deterministic(key: str) -> None:
    data = source_bytes(key)
    first = dicom_results(data, ASSESSABLE, RGB, MODEL)
    again = dicom_results(data, NOT_ASSESSABLE, RGB[::-1].copy(), MODEL)  # another result: same instances
    other = dicom_results(data, ASSESSABLE, RGB, OTHER_MODEL)
    uids = [
        first.sr.SOPInstanceUID,
        first.sc.SOPInstanceUID,
        first.sr.SeriesInstanceUID,
        first.sc.SeriesInstanceUID,
    ]
    assert all(UID(u).is_valid and u.startswith("2.25.") for u in uids)
    assert len(set(uids)) == 4
    assert uids == [
        again.sr.SOPInstanceUID,
        again.sc.SOPInstanceUID,
        again.sr.SeriesInstanceUID,
        again.sc.SeriesInstanceUID,
    ]
    assert not set(uids) & {other.sr.SOPInstanceUID, other.sc.SOPInstanceUID, other.sr.SeriesInstanceUID}
    assert first.sr.file_meta.MediaStorageSOPInstanceUID == first.sr.SOPInstanceUID


def test_uids_are_unique_across_sources() -> None:
    sources = [TINY[k]() for k in TINY] + [p.read_bytes() for p in REAL]
    sources.append(make_source(SOPInstanceUID="1.2.826.0.1.3680043.8.498.99"))  # same study, another image
    by_source: dict[str, set[str]] = {}
    series: dict[str, set[str]] = {}
    for data in sources:
        out = dicom_results(data, ASSESSABLE, RGB, MODEL)
        src = read(data)
        # two files sharing a SOP Instance UID (siim and its header edit) are one instance for DICOM
        by_source.setdefault(str(src.SOPInstanceUID), set()).update(
            {out.sr.SOPInstanceUID, out.sc.SOPInstanceUID}
        )
        series.setdefault(str(src.StudyInstanceUID), set()).update(
            {out.sr.SeriesInstanceUID, out.sc.SeriesInstanceUID}
        )
    assert all(len(v) == 2 for v in by_source.values()) and all(len(v) == 2 for v in series.values())
    instances = [u for v in by_source.values() for u in v]
    assert len(set(instances)) == len(instances) == 2 * len(by_source)
    assert len({u for v in series.values() for u in v}) == 2 * len(series)


@pytest.mark.parametrize("result", [ASSESSABLE, NOT_ASSESSABLE], ids=["assessable", "not-assessable"])
def test_sr_holds_every_probability_the_evaluations_and_the_notice(result: Prediction) -> None:
    sr = build_sr(read(make_source()), result, MODEL)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [SCHEME]
    for label, p in result.probabilities.items():
        (num,) = named(sr, _codes.PROBABILITY_CODES[label])
        value = num.MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(p)
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"

    def values(code: Any) -> list[str]:
        return [i.ConceptCodeSequence[0].CodeValue for i in named(sr, code)]

    assert values(_codes.PREDICTED_CLASS) == [_codes.CLASS_CODES[str(result.label)].value]
    above = [k for k, v in (result.above_operating_point or {}).items() if v]
    assert values(_codes.ABOVE_OPERATING_POINT) == [_codes.CLASS_CODES[k].value for k in above]
    assert values(_codes.ASSESSABLE) == ["373066001" if result.assessable else "373067005"]
    assert values(_codes.NOT_ASSESSABLE_REASON) == [_codes.reason_code(r.code).value for r in result.reasons]
    texts = [i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"]
    assert DISCLAIMER in texts and NOTICE in texts and MODEL.sha256 in texts
    assert f"sha256={MODEL.sha256}" in texts and MODEL.name in texts and MODEL.version in texts
    assert all(f"{r.code}: {r.message}" in texts for r in result.reasons)


CREATION_TIMES = frozenset(
    {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime"}
    | {"DateOfSecondaryCapture", "TimeOfSecondaryCapture"}
)


def _encoded_without_times(ds: Dataset) -> bytes:
    """The Part 10 bytes of ``ds`` with every creation date and time set to one value (a copy is changed)."""
    ds = read(_to_bytes(ds))
    for elem in ds.iterall():
        if elem.keyword in CREATION_TIMES:
            elem.value = {"DA": "20000101", "TM": "000000"}.get(elem.VR, "20000101000000")
    return _to_bytes(ds)


@pytest.mark.parametrize("key", SOURCES)
@pytest.mark.parametrize("result", [ASSESSABLE, NOT_ASSESSABLE], ids=["assessable", "not-assessable"])
def test_sr_equals_highdicoms_build_of_the_whole_report(key: str, result: Prediction) -> None:
    """build_sr encodes the model's fixed items once and the rest per report; the document must be what
    highdicom's MeasurementReport and ComprehensiveSR make of the whole tree, and must stay so after a
    report with other content was built (nothing of it may be reused)."""
    from highdicom.sr import (
        ComprehensiveSR,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    from cxr.dicom import sr as sr_module
    from cxr.dicom._identity import instance_uid, tracking_uid
    from cxr.dicom._source import source_header

    src = read(source_bytes(key))
    header = source_header(src, "x")
    sop_uid = instance_uid(header.SOPInstanceUID, MODEL, "sr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = MeasurementReport(
            observation_context=sr_module._observation(MODEL),
            procedure_reported=_codes.PROCEDURE,
            imaging_measurements=[
                MeasurementsAndQualitativeEvaluations(  # TID 1501, as docs/dicom.md lays it out
                    tracking_identifier=TrackingIdentifier(
                        tracking_uid(sop_uid), sr_module.TRACKING_IDENTIFIER
                    ),
                    algorithm_id=sr_module.algorithm_identification(MODEL),
                    measurements=[
                        Measurement(_codes.class_code(k, _codes.PROBABILITY_CODES), float(p), _codes.UNIT)
                        for k, p in result.probabilities.items()
                    ],
                    qualitative_evaluations=[
                        QualitativeEvaluation(concept, value)
                        for concept, value in sr_module._evaluation_pairs(result, str(result.label))
                    ],
                    source_images=[SourceImageForMeasurementGroup.from_source_image(header)],
                )
            ],
        )
        report[0].ContentSequence.append(sr_module.texts_container(sr_module.report_texts(result, MODEL)))
        whole = ComprehensiveSR(
            evidence=[header], content=report, **sr_module._document(header, MODEL, sop_uid)
        )
    other = NOT_ASSESSABLE if result is ASSESSABLE else ASSESSABLE
    build_sr(src, other, MODEL)  # the model's encoded items are now cached, with the other report's texts
    fast = build_sr(src, result, MODEL)
    assert codes.DCM.ImagingMeasurements.value in str(whole.ContentSequence)
    assert len(fast.ContentSequence) == len(report[0].ContentSequence) > 2
    assert _encoded_without_times(fast) == _encoded_without_times(whole)


@pytest.mark.parametrize("result", [ASSESSABLE, NOT_ASSESSABLE], ids=["assessable", "not-assessable"])
def test_the_sr_reads_back_as_the_prediction_it_was_made_from(result: Prediction) -> None:
    written = pydicom.dcmread(io.BytesIO(_to_bytes(build_sr(read(make_source()), result, MODEL))))
    back = read_sr(written)
    assert (back.label, dict(back.probabilities), back.assessable) == (
        result.label,
        dict(result.probabilities),
        result.assessable,
    )
    assert back.above_operating_point == tuple(
        k for k, v in (result.above_operating_point or {}).items() if v
    )
    assert (back.reasons, back.model_sha256, back.disclaimer) == (result.reasons, MODEL.sha256, DISCLAIMER)
    with pytest.raises(DataError, match="carries no cxr result"):
        read_sr(read(make_source()))


@pytest.mark.parametrize("key", SOURCES)
def test_sc_carries_the_rgb_pixels_with_burned_in_annotation(key: str) -> None:
    sc = dicom_results(source_bytes(key), NOT_ASSESSABLE, RGB, MODEL).sc
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    written = pydicom.dcmread(io.BytesIO(_to_bytes(sc)))
    np.testing.assert_array_equal(written.pixel_array, RGB)


SET_BY_CXR = frozenset({"PatientOrientation", "Laterality", "ConversionType"})


@pytest.mark.parametrize("key", SOURCES)
@pytest.mark.parametrize("shape", [(40, 30), (33, 27)], ids=["even", "odd-length"])
def test_sc_equals_highdicoms_build_with_the_pixels(key: str, shape: tuple[int, int]) -> None:
    """build_sc makes the SC with a placeholder (while the picture is drawn), then puts the pixels in: each
    element highdicom's SCImage writes for the real pixels must be there and equal (creation and capture
    times aside), but for what cxr sets itself afterwards."""
    from highdicom.sc import SCImage

    from cxr.dicom import sc as sc_module
    from cxr.dicom._source import source_header

    header = source_header(read(source_bytes(key)), "x")
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = SCImage.from_ref_dataset(
            ref_dataset=header, pixel_array=rgb, **sc_module.sc_arguments(header, MODEL)
        )
    fast = read(_encoded_without_times(build_sc(read(source_bytes(key)), rgb, MODEL, name="x")))
    compared = 0
    for elem in read(_encoded_without_times(whole)):
        if elem.keyword in SET_BY_CXR:
            continue
        assert elem.tag in fast and fast[elem.tag].value == elem.value, elem.keyword
        compared += 1
    assert compared > 30 and (fast.Rows, fast.Columns) == shape
    np.testing.assert_array_equal(fast.pixel_array, rgb)


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _errors(path: Path) -> set[str]:
    """dciodvfy's Error lines, with the element named replaced by <tag> (an invalid source UID copied into a
    Referenced SOP Instance UID is the source's error, not ours)."""
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    tag = re.compile(r"\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)[^<\[\n]*")
    return {tag.sub("<tag>", line).strip() for line in lines if line.startswith("Error")}


@pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize("key", SOURCES)
def test_sr_and_sc_pass_dciodvfy_with_no_error_the_source_lacks(key: str, tmp_path: Path) -> None:
    source = tmp_path / "source.dcm"
    source.write_bytes(source_bytes(key))
    known = _errors(source)
    sr_path, sc_path = write_dicom_results(
        dicom_results(source.read_bytes(), NOT_ASSESSABLE, RGB, MODEL), tmp_path
    )
    for path in (sr_path, sc_path):
        assert _errors(path) - known == set(), path.name


def test_written_files_are_named_by_uid_with_a_file_meta_header(tmp_path: Path) -> None:
    out = dicom_results(make_source(), ASSESSABLE, RGB, MODEL)
    sr_path, sc_path = write_dicom_results(out, tmp_path / "out")
    assert (sr_path.name, sc_path.name) == (f"{out.sr.SOPInstanceUID}.dcm", f"{out.sc.SOPInstanceUID}.dcm")
    for path, ds in ((sr_path, out.sr), (sc_path, out.sc)):
        back = pydicom.dcmread(path)  # not forced: needs the preamble and the file meta header
        assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (back.SpecificCharacterSet, str(back.PatientName)) == ("ISO_IR 192", "Müller^Jürgen")
    assert write_dicom_results(out, tmp_path / "out") == (sr_path, sc_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([sr_path.name, sc_path.name])
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot write DICOM results into .*file"):
        write_dicom_results(out, tmp_path / "file" / "out")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not a dicom file at all" * 8, "not an image"),
        (make_source(PixelData=None), "not an image"),
        (make_source(StudyInstanceUID=None), "StudyInstanceUID"),
        (make_source(file_meta=False, SOPInstanceUID=None), "SOPInstanceUID"),
        (make_source(Rows=0), "not an image"),
        (make_source(file_meta=False, SOPClassUID="1.2.3.4"), "SOP Class UID 1.2.3.4 is not"),
        (make_source(SpecificCharacterSet="ISO_IR 999"), "'ISO_IR 999' is not a DICOM character set"),
    ],
    ids=["garbage", "no-pixels", "no-study-uid", "no-sop-uid", "no-rows", "unknown-class", "bad-charset"],
)
def test_sources_without_image_or_uids_are_refused_naming_the_file(data: bytes, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected) as info:
        dicom_results(data, ASSESSABLE, RGB, MODEL)
    assert "a.dcm" in str(info.value) and info.value.hint


def test_failed_predictions_and_bad_arrays_are_refused() -> None:
    failed = Prediction(source="c.dcm", label=None, probability=None, error="truncated pixel data")
    with pytest.raises(DataError, match="c.dcm: the prediction failed"):
        build_sr(read(make_source()), failed, MODEL)
    with pytest.raises(DataError, match=r"RGB uint8 \[H, W, 3\]"):
        build_sc(read(make_source()), RGB[..., 0], MODEL)


def test_private_codes_cover_every_class_and_reason_under_one_scheme() -> None:
    known = (*REASON_CODES, OUT_OF_DISTRIBUTION, NARROW_GREY_RANGE)
    assert set(_codes.REASON_CODES) == set(known)
    assert set(_codes.CLASS_CODES) == set(_codes.PROBABILITY_CODES) == set(CLASSES)
    own = [
        v for k, v in vars(_codes).items() if k.isupper() and getattr(v, "scheme_designator", "") == SCHEME
    ]
    own += [*_codes.CLASS_CODES.values(), *_codes.PROBABILITY_CODES.values(), *_codes.REASON_CODES.values()]
    assert len({c.value for c in own}) == len({id(c) for c in own})  # one meaning per code value
    assert all(len(c.value) <= 16 and len(c.meaning) <= 64 for c in own)
    assert NOTICE.startswith(DISCLAIMER)


@pytest.mark.parametrize("run", ["m.onnx", "m.heatmaps.onnx"], ids=["plain", "heatmap-twin"])
def test_model_identity_hashes_the_plain_model_file(tmp_path: Path, run: str) -> None:
    import hashlib
    from types import SimpleNamespace

    (tmp_path / "m.onnx").write_bytes(b"model bytes")
    (tmp_path / "m.heatmaps.onnx").write_bytes(b"twin bytes")
    ident = ModelIdentity.from_predictor(SimpleNamespace(model_path=tmp_path / run, model_id="ignored"))
    sha = hashlib.sha256(b"model bytes").hexdigest()  # the twin computes the plain model's results
    assert ident == ModelIdentity("m.onnx", __import__("cxr").__version__, sha, sha[:16])
