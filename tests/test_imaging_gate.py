"""The DICOM header gate: real chest files pass, non-chest and non-frontal headers are refused with a code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from cxr.imaging.gate import (  # noqa: E402
    DICOM_BODY_PART,
    DICOM_DESCRIPTION,
    DICOM_MODALITY,
    DICOM_VIEW_POSITION,
    dicom_file_reasons,
)
from tests.test_imaging_dicom import make_dicom  # noqa: E402

DICOM_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
CHESTS = [
    "nih_cxr14_dx_chest.dcm",
    "siim_acr_cr_chest_jpegbaseline.dcm",
    "txv_Fake_MONOCHROME1_header_edit.dcm",
    "barre_CR-MONO1-10-chest.dcm",
]
PIXELS = np.zeros((8, 8), np.uint8)


def real(name: str) -> bytes:
    path = DICOM_DIR / name
    if not path.is_file():
        pytest.skip(f"real DICOM sample not found at {path}")
    return path.read_bytes()


@pytest.mark.parametrize("name", CHESTS)
def test_real_chest_radiographs_pass(name: str) -> None:
    assert dicom_file_reasons(real(name), name) == ()


def test_the_real_dental_file_is_refused_by_its_description() -> None:
    reasons = dicom_file_reasons(real("fodicom_CR-ModalitySequenceLUT_dental.dcm"))
    assert [r.code for r in reasons] == [DICOM_DESCRIPTION] and "TEETH" in reasons[0].message


@pytest.mark.parametrize(
    ("attrs", "codes"),
    [
        ({"ViewPosition": "LL"}, [DICOM_VIEW_POSITION]),
        ({"ViewPosition": "RLD"}, [DICOM_VIEW_POSITION]),
        ({"Modality": "CT"}, [DICOM_MODALITY]),
        ({"Modality": "MR", "BodyPartExamined": "KNEE"}, [DICOM_MODALITY, DICOM_BODY_PART]),
        ({"BodyPartExamined": "HAND"}, [DICOM_BODY_PART]),
        ({"SeriesDescription": "KNEE 2 VIEWS"}, [DICOM_DESCRIPTION]),
        ({"BodyPartExamined": "THORAX", "ViewPosition": "AP"}, []),
        ({"BodyPartExamined": "", "ViewPosition": ""}, []),  # empty never refuses
        ({"StudyDescription": "CHEST PA"}, []),
    ],
)
def test_constructed_headers(attrs: dict[str, str], codes: list[str]) -> None:
    reasons = dicom_file_reasons(make_dicom(PIXELS, **attrs))
    assert [r.code for r in reasons] == codes
    if codes:  # the message names the value found
        assert any(v.upper() in " ".join(r.message for r in reasons) for v in attrs.values() if v)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(64), b"\x08\x00\x05\x00" + b"\xff" * 60, b""])
def test_non_dicom_or_garbage_gives_no_reasons(data: bytes) -> None:
    assert dicom_file_reasons(data) == ()
