"""The DICOM header gate: real chest files pass, non-chest and non-frontal headers are refused with a code."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402

from cxr.imaging.gate import (  # noqa: E402
    DICOM_BODY_PART,
    DICOM_DESCRIPTION,
    DICOM_MODALITY,
    DICOM_VIEW_POSITION,
    dicom_file_reasons,
    dicom_header_reasons,
)
from cxr.spec import Reason  # noqa: E402
from tests.test_imaging_dicom import make_dicom  # noqa: E402

DICOM_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
CHESTS = [
    "nih_cxr14_dx_chest.dcm",
    "siim_acr_cr_chest_jpegbaseline.dcm",
    "txv_Fake_MONOCHROME1_header_edit.dcm",
    "barre_CR-MONO1-10-chest.dcm",
]
DENTAL = "fodicom_CR-ModalitySequenceLUT_dental.dcm"
PIXELS = np.zeros((8, 8), np.uint8)


def real(name: str) -> bytes:
    path = DICOM_DIR / name
    if not path.is_file():
        pytest.skip(f"real DICOM sample not found at {path}")
    return path.read_bytes()


def codes(reasons: tuple[Reason, ...]) -> list[str]:
    return [r.code for r in reasons]


@pytest.mark.parametrize("name", CHESTS)
def test_real_chest_radiographs_pass(name: str) -> None:
    assert dicom_file_reasons(real(name), name) == ()


def test_the_real_dental_file_is_refused_by_its_description() -> None:
    reasons = dicom_file_reasons(real(DENTAL), DENTAL)
    assert codes(reasons) == [DICOM_DESCRIPTION]
    assert "TEETH" in reasons[0].message and "CHEST" in reasons[0].message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"ViewPosition": "LL"}, [DICOM_VIEW_POSITION]),
        ({"Modality": "MR"}, [DICOM_MODALITY]),
        ({"BodyPartExamined": "KNEE"}, [DICOM_BODY_PART]),
        ({"BodyPartExamined": "Chest", "ViewPosition": "ap"}, []),
    ],
)
def test_an_edited_copy_of_a_real_header(edit: dict[str, str], expected: list[str]) -> None:
    ds = pydicom.dcmread(io.BytesIO(real(CHESTS[0])), stop_before_pixels=True)
    with warnings.catch_warnings():  # pydicom warns on lower-case CS values, which this test sets on purpose
        warnings.simplefilter("ignore")
        for key, value in edit.items():
            setattr(ds, key, value)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    assert codes(dicom_file_reasons(buf.getvalue(), "edited.dcm")) == expected


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"ViewPosition": "LL"}, [DICOM_VIEW_POSITION]),
        ({"ViewPosition": "RLD"}, [DICOM_VIEW_POSITION]),
        ({"ViewPosition": "LATERAL"}, [DICOM_VIEW_POSITION]),
        ({"Modality": "CT"}, [DICOM_MODALITY]),
        ({"Modality": "DR"}, [DICOM_MODALITY]),
        ({"Modality": "MR", "BodyPartExamined": "KNEE"}, [DICOM_MODALITY, DICOM_BODY_PART]),
        ({"BodyPartExamined": "KNEE"}, [DICOM_BODY_PART]),
        ({"BodyPartExamined": "CHESTABDOMEN"}, [DICOM_BODY_PART]),
        ({"SeriesDescription": "KNEE 2 VIEWS"}, [DICOM_DESCRIPTION]),
        ({"Modality": "CR", "BodyPartExamined": "THORAX", "ViewPosition": "AP"}, []),
        ({"BodyPartExamined": "CHEST_PA", "ViewPosition": "PA"}, []),
        ({"ViewPosition": ""}, []),  # body part absent, view empty
        ({"BodyPartExamined": "", "ViewPosition": ""}, []),
        ({"StudyDescription": "CHEST PA ARMS UP"}, []),  # other anatomy beside the chest is not refused
    ],
)
def test_constructed_headers(attrs: dict[str, str], expected: list[str]) -> None:
    reasons = dicom_file_reasons(make_dicom(PIXELS, **attrs), "made.dcm")
    assert codes(reasons) == expected
    text = " ".join(r.message for r in reasons)
    for code, keyword in [(DICOM_MODALITY, "Modality"), (DICOM_BODY_PART, "BodyPartExamined")]:
        if code in expected:  # the message names the value found and what is acceptable
            assert repr(attrs[keyword].upper()) in text
    if DICOM_VIEW_POSITION in expected:
        assert repr(attrs["ViewPosition"]) in text and "PA or AP" in text


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, []),
        ({"Modality": "DX", "ViewPosition": "PA"}, []),
        ({"ViewPosition": "LPO"}, [DICOM_VIEW_POSITION]),
    ],
)
def test_header_reasons_of_a_dataset(attrs: dict[str, str], expected: list[str]) -> None:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    assert codes(dicom_header_reasons(ds)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(64),
        b"\xff\xd8\xff\xe0" + bytes(64),  # JPEG
        b"\x08\x00\x05\x00" + b"\xff" * 60,
        bytes(128) + b"DICM" + b"\xfe\xff" * 40,
        b"",
    ],
)
def test_non_dicom_or_garbage_gives_no_reasons(data: bytes) -> None:
    assert dicom_file_reasons(data, "junk") == ()


def test_an_element_pydicom_cannot_convert_counts_as_absent() -> None:
    data = make_dicom(PIXELS, SeriesDescription="KNEE", ViewPosition="LL")
    tag = b"\x08\x00\x3e\x10LO"  # (0008,103E) SeriesDescription, explicit VR little endian
    assert tag in data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pydicom warning escapes either
        reasons = dicom_file_reasons(data.replace(tag, b"\x08\x00\x3e\x10L)"), "broken.dcm")
    assert codes(reasons) == [DICOM_VIEW_POSITION]
