"""A real PACS and a real modality on loopback, for the DICOM node's tests and benchmark.

``Orthanc``: Debian's Orthanc (with the DICOMweb plugin) from a temporary JSON config, storage in a folder,
remote access and authentication off; ``start``/``stop``/``restart`` on the same storage, REST helpers.
``ListenProcess``: `cxr listen` as a subprocess (``python -m cxr listen``). ``storescu``/``echoscu``: dcmtk's
modality tools.
``chest_dx``: a tiny uncompressed DX chest radiograph, so something runs without ../shared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
PLUGINS = Path("/usr/share/orthanc/plugins")
TOOLS = {"Orthanc": ORTHANC, "storescu": shutil.which("storescu"), "echoscu": shutil.which("echoscu")}
# storescu proposes only uncompressed syntaxes unless told which compressed one to offer
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "-xs",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
}


def missing_tools() -> list[str]:
    return [name for name, path in TOOLS.items() if path is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc server on loopback (see the module docstring)."""

    def __init__(self, folder: Path, node_port: int, aet: str = "ORTHANC") -> None:
        self.folder = Path(folder)
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        self.folder.mkdir(parents=True, exist_ok=True)
        plugins = (
            [str(PLUGINS / "libOrthancDicomWeb.so")] if (PLUGINS / "libOrthancDicomWeb.so").exists() else []
        )
        config = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"cxr": ["CXR", "127.0.0.1", node_port]},
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
            "StorageCompression": False,
        }
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer on its REST API")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:  # noqa: S310
            return json.loads(r.read())

    def file(self, instance_id: str) -> bytes:
        url = f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310
            return bytes(r.read())

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance's simplified main tags, with its Orthanc id and parent study id."""
        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            series = self.get(f"/instances/{iid}/series")
            out.append({**tags, "_id": iid, "_study": series["ParentStudy"]})
        return out


class ListenProcess:
    """`cxr listen` in a subprocess on a free port (``start`` waits until C-ECHO answers)."""

    def __init__(self, model: Path, spool: Path, forward: str, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = [
            sys.executable, "-m", "cxr", "listen", "--model", str(model), "--spool", str(spool),
            "--port", str(self.port), *(["--forward-url", forward] if forward.startswith("http") else ["--forward", forward]),
            "--retry-initial", "0.2", "--retry-max", "1", *extra,
        ]  # fmt: skip
        self.log = Path(spool).parent / f"listen-{Path(spool).name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ListenProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cxr listen exited: {self.log.read_text()[-3000:]}")
            if echoscu(self.port).returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"cxr listen did not answer C-ECHO: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def echoscu(port: int, calling: str = "MOD", called: str = "CXR") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS["echoscu"]), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def transfer_syntax(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")


def storescu(
    port: int, files: Sequence[Path], calling: str = "MOD", called: str = "CXR", background: bool = False
) -> list[subprocess.CompletedProcess[str]] | subprocess.Popen[str]:
    """Send ``files`` (one storescu per compressed transfer syntax, each proposing it); -nh: go on after a
    failure. ``background``: one storescu for all files, returned running (uncompressed files only)."""
    base = [str(TOOLS["storescu"]), "-nh", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    if background:
        return subprocess.Popen(
            [*base, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(STORESCU_PROPOSE.get(transfer_syntax(f), ""), []).append(str(f))
    return [
        subprocess.run(
            [*base, *([flag] if flag else []), *names], capture_output=True, text=True, timeout=120
        )
        for flag, names in groups.items()
    ]


def chest_dx(path: Path, seed: int, size: int = 64, study: str | None = None) -> Path:
    """A tiny DX For Presentation chest PA (8-bit MONOCHROME2, Explicit VR LE); UIDs from ``seed``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["cxr-dx", str(seed)]
    )
    ds.StudyInstanceUID = study or generate_uid(entropy_srcs=["cxr-dx-study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-dx-series", str(seed)])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Test^Dx{seed}", f"DX{seed}", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    yy, xx = np.mgrid[0:size, 0:size]
    img = 60 + 120 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2)) + rng.normal(0, 12, (size, size))
    img = np.where(np.abs(xx - size / 2) < size / 10, 220, img) * (0.8 + 0.2 * (yy / size))
    ds.PixelData = np.clip(img, 0, 255).astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def spool_counts(spool: Path) -> dict[str, int]:
    """How many instances each spool stage holds."""
    return {
        "received": len(list((spool / "received").glob("*.dcm"))),
        **{s: sum(1 for p in (spool / s).iterdir() if p.is_dir()) for s in ("predicted", "sent", "failed")},
    }


def wait_for(check: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
