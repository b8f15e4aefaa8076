"""For the DICOM node's tests: a stand-in SR/SC responder used only while ``cxr.dicom`` lacks its builders,
and ``python -m tests.dicom_standin ARGS``, which runs `cxr ARGS` with that stand-in in place.

The stand-in writes the smallest objects a PACS files in the source's study, with UIDs derived from the
source instance and the model like the real ones (so resends replace, never duplicate): a Comprehensive SR
whose one text item is the prediction as JSON, and an RGB secondary capture of the node's picture.
"""

from __future__ import annotations

import json
import sys
from io import BytesIO
from typing import Any

import numpy as np


def real_builders_present() -> bool:
    try:
        from cxr.dicom import dicom_results  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


def standin_responder(model_sha256: str) -> Any:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def base(src: Dataset, sop_class: str, kind: str, modality: str) -> Dataset:
        uid = generate_uid(prefix=None, entropy_srcs=["standin", src.SOPInstanceUID, model_sha256, kind])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for kw in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
            setattr(ds, kw, src.get(kw, ""))
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, modality
        ds.SeriesInstanceUID = generate_uid(prefix=None, entropy_srcs=["standin", src.StudyInstanceUID, kind])
        ds.SeriesNumber, ds.InstanceNumber = 990 if kind == "sr" else 991, 1
        return ds

    def respond(source: bytes, pred: Any, rgb: np.ndarray) -> tuple[Any, Any]:
        src = pydicom.dcmread(BytesIO(source), force=True, stop_before_pixels=True)
        sr = base(src, "1.2.840.10008.5.1.4.1.1.88.33", "sr", "SR")
        item = Dataset()
        item.ValueType, item.RelationshipType = "TEXT", "CONTAINS"
        item.TextValue = json.dumps({"label": pred.label, "assessable": pred.assessable})
        sr.ValueType, sr.ContentSequence = "CONTAINER", [item]
        sc = base(src, "1.2.840.10008.5.1.4.1.1.7", "sc", "OT")
        sc.Rows, sc.Columns = rgb.shape[:2]
        sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.PlanarConfiguration = 3, "RGB", 0
        sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
        sc.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
        return sr, sc

    return respond


def _patch() -> None:
    """Make ``cxr.dicom.node.cxr_responder`` the stand-in (only while the real builders are missing)."""
    if real_builders_present():
        return
    import cxr.dicom.node as node
    from cxr.session import file_sha256

    node.cxr_responder = lambda predictor: standin_responder(file_sha256(predictor.model_path))


if __name__ == "__main__":
    _patch()
    from cxr.cli.main import app

    sys.argv[0] = "cxr"
    app()
