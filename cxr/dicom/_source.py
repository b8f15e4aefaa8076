"""Takes the source image's pydicom Dataset; makes the checked, repaired header the results copy identity from.

Refused (``DecodeError``, naming the file and what to do): a dataset with no pixel data or no Rows x Columns
(not an image), and one without Study, Series or SOP Instance UID or SOP Class UID (a result could not be
placed in its study nor point at its image).
Patient and study attributes are copied exactly, with these repairs (docs/dicom.md, "Imperfect sources"):
- a type 2 attribute the results must carry (``TYPE2``) and the source lacks is written empty;
- an old ACR-NEMA date "1995.07.20" or time "11:22:07" becomes "19950720" / "112207";
- a Patient's Age without its unit ("81", up to 150) is read as years ("081Y"), the unit of the public chest
  datasets that write ages so (NIH ChestX-ray14); any other invalid value is emptied when type 2, else dropped;
- a Patient's Sex outside M, F, O is emptied (type 2; highdicom refuses other values).
Nothing else is changed; the source dataset itself is never modified.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import VALIDATORS

from cxr.errors import DecodeError

log = logging.getLogger(__name__)

TYPE2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
}
"""Type 2 attributes of the Patient and General Study modules: present in every result, empty if unknown."""

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_SEXES = frozenset({"M", "F", "O", ""})
_OLD_DATE = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")
_OLD_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_BARE_AGE = re.compile(r"^\d{1,3}$")
# UIs are identity: copied as they are, even when invalid (the results must point at the source's own UIDs)
_CHECKED_VRS = frozenset({"AS", "CS", "DA", "DS", "DT", "IS", "TM", "LO", "SH", "PN", "LT", "ST"})


def _text(ds: Dataset, keyword: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
        return "" if value is None else str(value).strip()
    except Exception:  # a corrupt raw element fails to convert in assorted ways
        return ""


def check_source(ds: Dataset, name: str) -> None:
    """Refuse a dataset that is not an image or lacks the UIDs a result needs."""
    if "PixelData" not in ds or not _text(ds, "Rows") or not _text(ds, "Columns"):
        raise DecodeError(
            f"{name}: the DICOM dataset has no pixel data or no Rows x Columns; it is not an image, so cxr "
            "writes no DICOM results for it",
            hint="send the radiograph itself (a CR, DX or secondary capture image)",
            path=name,
        )
    missing = [k for k in REQUIRED_UIDS if not _text(ds, k)]
    if missing:
        raise DecodeError(
            f"{name}: the DICOM image has no {', '.join(missing)}; a DICOM result must name its study, "
            "series and image",
            hint="re-export the image from the PACS or modality (which assigns these UIDs)",
            path=name,
        )


def _repair(vr: str, value: str) -> str | None:
    """A repaired value for an invalid one (see the module docstring), or None when none applies."""
    if vr == "DA" and (m := _OLD_DATE.match(value)):
        return "".join(m.groups())
    if vr == "TM" and (m := _OLD_TIME.match(value)):
        return "".join(g or "" for g in m.groups())
    if vr == "AS" and _BARE_AGE.match(value) and int(value) <= 150:
        return f"{int(value):03d}Y"
    return None


def _valid(vr: str, value: Any) -> bool:
    validator = VALIDATORS.get(vr)
    if validator is None or value is None or value == "":
        return True
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return all(validator(vr, str(v))[0] for v in values if v is not None and str(v) != "")


def _sanitise(header: Dataset, name: str) -> None:
    for elem in list(header):
        if elem.VR not in _CHECKED_VRS or elem.tag.is_private:
            continue
        keyword = elem.keyword
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = header[elem.tag].value
            ok = _valid(elem.VR, value)
        except Exception:  # a raw element that cannot even be converted is invalid
            value, ok = None, False
        if ok:
            continue
        fixed = _repair(elem.VR, str(value).strip()) if isinstance(value, str) else None
        if fixed is not None:
            header[elem.tag].value = fixed
            log.debug("%s: %s %r repaired to %r", name, keyword or elem.tag, value, fixed)
        elif keyword in TYPE2:
            header[elem.tag].value = ""
            log.debug("%s: invalid type 2 %s %r written empty", name, keyword, value)
        else:
            del header[elem.tag]
            log.debug("%s: invalid optional %s %r dropped", name, keyword or elem.tag, value)


def source_header(ds: Dataset, name: str) -> Dataset:
    """A checked, repaired copy of ``ds`` without its pixel data, for highdicom to copy identity from."""
    check_source(ds, name)
    header = Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0 and elem.tag.group >= 0x0008:
            header.add(copy.deepcopy(elem))
    _sanitise(header, name)
    for keyword, vr in TYPE2.items():
        if keyword not in header:
            header.add_new(keyword, vr, "")
    if _text(header, "PatientSex").upper() not in _SEXES:
        header.PatientSex = ""
    return header
