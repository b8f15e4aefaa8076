"""Takes a DICOM source file's bytes, its ``Prediction``, the rendered result and the model; makes the two
DICOM results (SR and SC) and writes them as Part 10 files named by SOP Instance UID, atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from cxr.dicom._identity import ModelIdentity
from cxr.dicom._source import source_header
from cxr.dicom.sc import sc_shell, with_pixels
from cxr.dicom.sr import sr_from_header
from cxr.errors import DataError, first_line
from cxr.imaging.dicom import read_dataset
from cxr.spec import Prediction


@dataclass(frozen=True)
class DicomResults:
    """The Comprehensive SR and the Secondary Capture made for one source image."""

    sr: Dataset
    sc: Dataset


def dicom_results(
    source_bytes: bytes, result: Prediction, rgb: np.ndarray, model: ModelIdentity
) -> DicomResults:
    """Both results for the DICOM file ``source_bytes`` with the rendered result ``rgb`` (refused with a
    ``DecodeError`` when it is not a DICOM image with its UIDs, with a ``DataError`` when the prediction
    failed)."""
    sr, sc = result_documents(source_bytes, result, model)
    return DicomResults(sr=sr, sc=with_pixels(sc, rgb, result.source or "<bytes>"))


def result_documents(
    source_bytes: bytes, result: Prediction, model: ModelIdentity
) -> tuple[Dataset, Dataset]:
    """The SR, and the SC with a placeholder for its pixels (``cxr.dicom.sc.with_pixels`` puts them in): all
    that can be made while the picture is still being drawn. Refused as ``dicom_results`` says."""
    name = result.source or "<bytes>"
    header = source_header(read_dataset(source_bytes, name), name)  # checked and repaired once, for both
    return sr_from_header(header, result, model, name), sc_shell(header, model, name)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _write_atomic(ds: Dataset, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pydicom.dcmwrite(f, ds, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_dicom_results(results: DicomResults, out_dir: Path) -> tuple[Path, Path]:
    """Write the SR and the SC into ``out_dir`` as ``<SOP Instance UID>.dcm`` (file meta header included;
    each through a temporary file, fsync and ``os.replace``: a reader never sees half a file). Rewriting the
    same results replaces the files. Returns (SR path, SC path); a folder that cannot be written is a
    ``DataError`` naming it (the ``OSError`` as its cause)."""
    out = Path(out_dir)
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for ds in (results.sr, results.sc):
            path = out / f"{ds.SOPInstanceUID}.dcm"
            _write_atomic(ds, path)
            paths.append(path)
    except OSError as e:
        raise DataError(
            f"cannot write DICOM results into {out}: {first_line(e)}",
            hint="check that the folder is writable and its disk has space",
            path=out,
        ) from e
    return paths[0], paths[1]
