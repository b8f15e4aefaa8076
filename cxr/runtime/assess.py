"""Takes an input item and a result; makes the input gate's verdict: ``assessable`` and the reasons why not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxr.spec import Prediction, Reason

log = logging.getLogger(__name__)

HEAD_BYTES = 256
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def _dicom_bytes(item: Any) -> tuple[bytes, str] | None:
    """The whole file when ``item`` looks like DICOM (preamble, suffix or an old file's first tag), else None."""
    from cxr.imaging.dicom import might_be_dicom

    if isinstance(item, bytes | bytearray):
        data = bytes(item)
        return (data, "<bytes>") if might_be_dicom(data[:HEAD_BYTES]) else None
    if isinstance(item, Path | str):
        path = Path(item)
        try:
            with path.open("rb") as f:
                head = f.read(HEAD_BYTES)
            if path.suffix.lower() in DICOM_SUFFIXES or might_be_dicom(head):
                return path.read_bytes(), str(path)
        except OSError:  # decoding reports an unreadable file; the gate has nothing to add
            return None
    return None


def header_reasons(item: Any) -> tuple[Reason, ...]:
    """Reasons from the DICOM header of ``item`` (none for other formats, arrays, or a header it cannot read)."""
    try:
        from cxr.imaging.gate import dicom_file_reasons

        found = _dicom_bytes(item)
        if found is None:
            return ()
        return dicom_file_reasons(*found)
    except Exception:  # the gate must never cost a result: decoding already checked what matters
        log.debug(
            "could not check the DICOM header of %r", item if not isinstance(item, bytes) else "<bytes>"
        )
        return ()


def with_reasons(pred: Prediction, reasons: Sequence[Reason | None]) -> Prediction:
    """``pred`` with ``reasons`` added (``None`` entries skipped); any reason makes it not assessable."""
    extra = tuple(r for r in reasons if r is not None)
    if not extra or not pred.ok:
        return pred
    return replace(pred, assessable=False, reasons=pred.reasons + extra)
