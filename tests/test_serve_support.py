"""Helpers for the API tests (no tests here): real server processes on loopback, and crafted uploads.

``running_server`` starts ``python -m cxr.serve`` (the `cxr serve` command) on 127.0.0.1 with a free port
(``--port 0 --port-file``), waits for ``/readyz``, and always stops it (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DICOM_DIR = REPO.parent / "shared" / "data" / "dicom"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful), SIGKILL if it does not stop in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


@contextmanager
def running_server(
    model: Path,
    workdir: Path,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_s: float = 60,
) -> Iterator[ServerProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    cmd = [sys.executable, "-m", "cxr.serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--no-access-log", "--threads", "1", *args]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    full_env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server: ServerProcess | None = None
    try:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if server is None and port_file.is_file():
                server = ServerProcess(proc, int(port_file.read_text()), log_path)
            if server is not None:
                try:
                    if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"server not ready within {ready_s} s:\n{log_path.read_text()[-3000:]}")
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(5)


def png_bytes(width: int = 48, height: int = 48, seed: int = 0, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width), dtype=np.uint8)
    img = Image.fromarray(arr, mode="L").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def padded(data: bytes, size: int) -> bytes:
    """``data`` followed by zero bytes up to exactly ``size`` bytes (decoders ignore data after the end)."""
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes do not fit in {size}")
    return data + b"\0" * (size - len(data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_frames(n: int, size: int = 16) -> bytes:
    frames = [Image.fromarray(np.full((size, size), 40 * i, dtype=np.uint8), mode="L") for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def dicom_bytes(rows: int = 32, cols: int = 32, frames: int = 1, preamble: bool = True) -> bytes:
    """A small MONOCHROME2 16-bit DICOM (several frames when ``frames`` > 1)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.arange(rows * cols * frames, dtype=np.uint32) % 4096).astype(np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()
