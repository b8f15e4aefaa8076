"""Takes the source image's pydicom Dataset; makes the checked, repaired header the results copy identity from.

Refused (``DecodeError``, naming the file and what to do): a dataset with no pixel data or no Rows x Columns
(not an image), one without Study, Series or SOP Instance UID or SOP Class UID (a result could not be placed
in its study nor point at its image), one whose SOP class is no storage class highdicom knows, and one whose
Specific Character Set is not a defined term (its names could not be copied faithfully).
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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import VALIDATORS

from cxr.errors import CxrError, DecodeError, first_line

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


def _positive(ds: Dataset, keyword: str) -> bool:
    try:
        return int(_text(ds, keyword) or 0) > 0
    except ValueError:
        return False


def _known_sop_class(uid: str) -> bool:
    """Whether highdicom knows the IOD of ``uid`` (it copies patient and study modules by IOD)."""
    try:
        from highdicom._standard_utils import get_sop_class_iod_map
    except ImportError:  # a highdicom without this helper: let the build itself report what it cannot do
        return True
    return uid in get_sop_class_iod_map()


def _charset_ok(ds: Dataset) -> bool:
    from highdicom.enum import SpecificCharacterSetValues

    value = ds.get("SpecificCharacterSet")
    if value is None:
        return True
    values = [value] if isinstance(value, str) else list(value)
    known = {v.value for v in SpecificCharacterSetValues}
    return all(str(v).strip() in known or (i == 0 and not str(v).strip()) for i, v in enumerate(values))


def check_source(ds: Dataset, name: str) -> None:
    """Refuse a dataset that is not an image, lacks the UIDs a result needs, or whose SOP class or character
    set cxr cannot write results for."""
    if "PixelData" not in ds or not _positive(ds, "Rows") or not _positive(ds, "Columns"):
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
    sop_class = _text(ds, "SOPClassUID")
    if not _known_sop_class(sop_class):
        raise DecodeError(
            f"{name}: SOP Class UID {sop_class} is not a DICOM storage class cxr writes results for",
            hint="send the radiograph as a CR, DX or secondary capture image",
            path=name,
        )
    if not _charset_ok(ds):
        raise DecodeError(
            f"{name}: Specific Character Set {ds.get('SpecificCharacterSet')!r} is not a DICOM character set, "
            "so the patient's name cannot be copied faithfully",
            hint="fix the Specific Character Set (0008,0005) at the source, e.g. ISO_IR 100 or ISO_IR 192",
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


@contextmanager
def building(name: str, what: str) -> Iterator[None]:
    """Turn highdicom's errors on an odd source into a ``DecodeError`` that names the file."""
    try:
        yield
    except CxrError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise DecodeError(
            f"{name}: cannot build the DICOM {what} from this source ({type(e).__name__}: {first_line(e, 200)})",
            hint="check the source's header with dciodvfy and re-export it from the PACS",
            path=name,
        ) from e


def written_as_is(result: Dataset) -> tuple[str, ...]:
    """Mark a result dataset as already in its file's encoding (Explicit VR Little Endian, its own character
    set), so that pydicom's writer writes its elements as they are: a fresh dataset has no original encoding,
    and the writer then walks it for ambiguous VRs and decodes and re-encodes every raw element, which costs
    more than encoding it. Returns the character set's Python encodings (what its text is encoded with)."""
    charset = result.get("SpecificCharacterSet")
    encodings = tuple(convert_encodings(charset or default_encoding))
    # pydicom compares this with the dataset's character set as it states it: a list when one is given
    result.set_original_encoding(False, True, list(encodings) if charset else default_encoding)
    return encodings


def source_header(ds: Dataset, name: str) -> Dataset:
    """A checked, repaired copy of ``ds`` without its pixel data, for highdicom to copy identity from."""
    check_source(ds, name)
    header = Dataset()
    for elem in ds:
        if (
            elem.tag.group >= 0x0008 and elem.tag.group != 0x7FE0 and elem.tag.element != 0
        ):  # no group lengths
            header.add(copy.deepcopy(elem))
    _sanitise(header, name)
    for keyword, vr in TYPE2.items():
        if keyword not in header:
            header.add_new(keyword, vr, "")
    if _text(header, "PatientSex").upper() not in _SEXES:
        header.PatientSex = ""
    return header
