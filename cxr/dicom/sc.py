"""Takes the source image's Dataset, the rendered result (RGB, uint8 [H, W, 3]) and the model; makes an RGB
Secondary Capture Image that a viewer shows beside the radiograph.

The pixels are taken as given: the overlay renderer has already burned in the class, the probability (or NOT
ASSESSABLE and why) and the notice, so Burned In Annotation is YES. The image sits in the source's study, in
cxr's SC series for that study (UIDs: ``cxr.dicom._identity``), references the source image (Source Image
Sequence), says it is derived (Image Type DERIVED\\SECONDARY\\OTHER, Conversion Type WSD), and inherits the
source's lossy-compression flag (once lossy, always lossy: PS3.3 C.7.6.1.1.5). highdicom's ``SCImage`` wants a
coordinate system: PATIENT, with the source's Patient Orientation copied when valid and written empty otherwise
(type 2C; a rendered copy of the image keeps the image's directions); Body Part Examined and Laterality as
``_series_anatomy`` says.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cxr.dicom._identity import ModelIdentity, instance_uid, series_uid
from cxr.dicom._source import building, source_header, written_as_is
from cxr.errors import DataError

MANUFACTURER = "cxr"
SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "cxr AI overlay (decision support, not a diagnosis)"
DERIVATION = "cxr decision-support rendering: the source image with the model's result burned in"
_ORIENTATION_LETTERS = frozenset("APRLHF")
_PLACEHOLDER_ORIENTATION = ("L", "F")  # replaced below: highdicom wants some orientation for PATIENT
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # the pixels until the picture is drawn (``with_pixels``)


def _rgb(rgb: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(
            f"{name}: the secondary capture needs an RGB uint8 [H, W, 3] array, got {arr.dtype} {arr.shape}",
            hint="pass the overlay renderer's RGB image",
            path=name,
        )
    return np.ascontiguousarray(arr)


def _orientation(header: Dataset) -> list[str]:
    value = header.get("PatientOrientation")
    parts = (
        [str(v).strip().upper() for v in value] if value is not None and not isinstance(value, str) else []
    )
    if len(parts) == 2 and all(p and set(p) <= _ORIENTATION_LETTERS for p in parts):
        return parts
    return []  # written empty


def _series_anatomy(sc: Dataset, header: Dataset) -> None:
    """Body Part Examined copied; Laterality (type 2C) copied when the source has it, absent when the body
    part is known (the chest is unpaired), else written empty (unknown), as dciodvfy checks it."""
    part = str(header.get("BodyPartExamined", "") or "").strip()
    if part:
        sc.BodyPartExamined = part
    if "Laterality" in header:
        value = str(header.get("Laterality", "") or "").strip().upper()
        sc.Laterality = value if value in ("R", "L") else ""
    elif part:
        if "Laterality" in sc:
            del sc.Laterality
    else:
        sc.Laterality = ""


def _copy_lossy_flag(sc: Dataset, header: Dataset) -> None:
    if str(header.get("LossyImageCompression", "")).strip() == "01":
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in header:
                sc[keyword] = header[keyword]


def build_sc(source: Dataset, rgb: np.ndarray, model: ModelIdentity, *, name: str | None = None) -> Dataset:
    """The RGB Secondary Capture of ``rgb`` for the image ``source`` (see the module docstring)."""
    name = name or str(getattr(source, "filename", "") or "<dataset>")
    return sc_from_header(source_header(source, name), rgb, model, name)


def sc_from_header(header: Dataset, rgb: np.ndarray, model: ModelIdentity, name: str) -> Dataset:
    """``build_sc`` for a header already checked and repaired by ``source_header`` (made once per source)."""
    return with_pixels(sc_shell(header, model, name), rgb, name)


def sc_shell(header: Dataset, model: ModelIdentity, name: str) -> Dataset:
    """The secondary capture of ``header`` but for its pixels (a 1x1 placeholder): what can be made while the
    picture is still being drawn. ``with_pixels`` completes it."""
    with warnings.catch_warnings(), building(name, "secondary capture"):
        warnings.simplefilter("ignore", UserWarning)  # highdicom's person-name style hints on copied names
        sc = SCImage.from_ref_dataset(
            ref_dataset=header, pixel_array=_PLACEHOLDER, **sc_arguments(header, model)
        )
        sc.copy_patient_and_study_information(header)
    sc.PatientOrientation = _orientation(header)
    _series_anatomy(sc, header)
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = DERIVATION
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    _copy_lossy_flag(sc, header)
    return sc


def with_pixels(sc: Dataset, rgb: np.ndarray, name: str) -> Dataset:
    """``sc_shell``'s dataset with ``rgb`` as its pixels, encoded as highdicom's ``SCImage`` encodes them
    (native, 8 bits, colour-by-pixel: the array's bytes in C order, as its ``encode_frame`` makes them, without
    the flattened copy it makes first); the image's size is the only other thing that depends on them."""
    pixels = _rgb(rgb, name)
    sc.Rows, sc.Columns = pixels.shape[0], pixels.shape[1]
    sc.PixelData = pixels.tobytes()
    sc["PixelData"].VR = "OB"  # 8 bits allocated (PS3.5 A.2): what pydicom's writer would settle the VR to
    written_as_is(sc)
    return sc


def sc_arguments(header: Dataset, model: ModelIdentity) -> dict[str, Any]:
    """``SCImage.from_ref_dataset``'s arguments but for the source and the pixels."""
    return {
        "photometric_interpretation": "RGB",
        "bits_allocated": 8,
        "coordinate_system": "PATIENT",
        "series_instance_uid": series_uid(header.StudyInstanceUID, model, "sc"),
        "series_number": SC_SERIES_NUMBER,
        "sop_instance_uid": instance_uid(header.SOPInstanceUID, model, "sc"),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "patient_orientation": _PLACEHOLDER_ORIENTATION,
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "series_description": SC_SERIES_DESCRIPTION,
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
    }
