"""DICOM results of a prediction: a Comprehensive SR (TID 1500) and an RGB Secondary Capture, made with
highdicom (the ``dicom`` extra), placed in the source's study with deterministic UIDs (docs/dicom.md)."""

from __future__ import annotations

try:
    import highdicom  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "cxr.dicom needs highdicom: install the dicom extra (pip install 'cxr[dicom]')", name=e.name
    ) from e

from cxr.dicom._codes import DISCLAIMER, SCHEME
from cxr.dicom._identity import ModelIdentity
from cxr.dicom.read import SrContent, read_sr
from cxr.dicom.results import DicomResults, dicom_results, write_dicom_results
from cxr.dicom.sc import build_sc
from cxr.dicom.sr import build_sr

__all__ = [
    "DISCLAIMER",
    "SCHEME",
    "DicomResults",
    "ModelIdentity",
    "SrContent",
    "build_sc",
    "build_sr",
    "dicom_results",
    "read_sr",
    "write_dicom_results",
]
