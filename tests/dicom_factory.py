"""Tiny DICOM sources and hand-made results for the DICOM result tests (torch-free: the wall test uses it)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from cxr.dicom import ModelIdentity
from cxr.runtime.types import Prediction, Reason

MODEL = ModelIdentity("tiny_fused.onnx", "0.1.0", "ab" * 32, "abababababababab")
RGB = np.random.default_rng(0).integers(0, 256, size=(40, 32, 3), dtype=np.uint8)

ASSESSABLE = Prediction(
    source="a.dcm",
    label="Normal",
    confidence=0.7,
    probabilities={"COVID": 0.05, "Lung_Opacity": 0.15, "Normal": 0.7, "Viral Pneumonia": 0.1},
    above_operating_point={"COVID": False, "Lung_Opacity": True, "Normal": True, "Viral Pneumonia": False},
    assessable=True,
)
NOT_ASSESSABLE = Prediction(
    source="b.dcm",
    label="COVID",
    confidence=0.4,
    probabilities={"COVID": 0.4, "Lung_Opacity": 0.3, "Normal": 0.2, "Viral Pneumonia": 0.1},
    above_operating_point=None,
    assessable=False,
    reasons=(
        Reason("dicom_view_position", "DICOM ViewPosition is 'LL'"),
        Reason("new_rule", "a future rule"),
    ),
)


def make_source(*, file_meta: bool = True, **attrs: Any) -> bytes:
    """A 16x12 CR image with a UTF-8 patient name; ``attrs`` override or (None) remove attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "CR"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "P-001"
    ds.PatientSex = "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240102", "101500", "ACC1"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 12, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(16 * 12, dtype=np.uint8).tobytes()
    for k, v in attrs.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    buf = io.BytesIO()
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()
