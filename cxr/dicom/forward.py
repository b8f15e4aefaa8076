"""Send DICOM files to a PACS: C-STORE (pynetdicom SCU) to ``AET@HOST:PORT`` or DICOMweb STOW-RS to a URL.

Takes: a ``Destination`` (``parse_destination("PACS@10.0.0.5:104")`` or ``Destination.stow(url)``) and
Part 10 files (sent as written: never decoded and encoded again). Makes: nothing on success; a ``ForwardError`` that says whether a retry can help
(``transient``: the destination is down, busy or timed out) or not (it refused the objects). ``Backoff``
gives the capped exponential delays the node waits between tries. Stdlib ``urllib`` for STOW-RS.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import ConfigError, CxrError

_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")
# C-STORE statuses a retry can cure: out of resources (A7xx) and the ones pynetdicom reports when the peer
# aborted or timed out (no status at all). Every other failure (A9xx does not match SOP class, Cxxx cannot
# understand) is the destination refusing the object: sending it again gives the same answer.
_TRANSIENT_STATUS = range(0xA700, 0xA800)


class ForwardError(CxrError):
    """Sending to the destination failed; ``transient`` says whether trying again later can succeed."""

    def __init__(self, message: str, *, transient: bool, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (``ae_title``, ``host``, ``port``) or a STOW-RS ``url``."""

    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @classmethod
    def stow(cls, url: str) -> Destination:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(
                f"--forward-url {url!r} is not an http(s) URL",
                hint="give the DICOMweb base, e.g. http://pacs:8042/dicom-web (STOW-RS posts to URL/studies)",
            )
        return cls(url=url.rstrip("/"))

    def __str__(self) -> str:
        return self.url or f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` -> ``Destination`` (AE title 1-16 characters, no backslash; port 1-65535)."""
    m = _DEST.match(text.strip())
    port = int(m["port"]) if m else 0
    aet = m["aet"].strip() if m else ""
    if not m or not 0 < port < 65536 or not aet or "\\" in aet:
        raise ConfigError(
            f"--forward {text!r} is not AET@HOST:PORT",
            hint="e.g. --forward ORTHANC@127.0.0.1:4242 (the PACS's AE title, address and DICOM port; "
            "AE title at most 16 characters)",
        )
    return Destination(ae_title=aet, host=m["host"].strip("[]"), port=port)


@dataclass(frozen=True)
class Backoff:
    """Delays between tries: ``initial_s`` doubled after each failure, capped at ``max_s``; ``budget_s``:
    how long one object is retried before it is given up (moved to the spool's failed/)."""

    initial_s: float = 1.0
    max_s: float = 60.0
    budget_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.budget_s < 0:
            raise ConfigError(
                f"retry settings need 0 < initial ({self.initial_s}) <= max ({self.max_s}) and budget "
                f"({self.budget_s}) >= 0",
                hint="e.g. --retry-initial 1 --retry-max 60 --retry-budget 3600",
            )

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


def send(files: Sequence[Path], dest: Destination, *, calling_ae: str, timeout_s: float = 30.0) -> None:
    """Send every Part 10 file to ``dest`` (one association or one STOW-RS request); ForwardError on failure."""
    if dest.url:
        stow_rs(files, dest.url, timeout_s=timeout_s)
    else:
        c_store(files, dest, calling_ae=calling_ae, timeout_s=timeout_s)


def c_store(files: Sequence[Path], dest: Destination, *, calling_ae: str, timeout_s: float = 30.0) -> None:
    """C-STORE each file over one association, proposing each one's SOP class in its transfer syntax (read
    from its file meta header; pynetdicom sends the file's encoded dataset as it is)."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    metas = [read_file_meta_info(f) for f in files]
    for meta in metas:
        ts = meta.TransferSyntaxUID
        syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        if meta.MediaStorageSOPClassUID not in [c.abstract_syntax for c in ae.requested_contexts]:
            ae.add_requested_context(meta.MediaStorageSOPClassUID, syntaxes)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        refused = assoc.is_rejected
        raise ForwardError(
            f"{dest}: association {'rejected' if refused else 'not established (down or unreachable)'}",
            transient=True,  # a rejection is often 'busy' or a PACS being reconfigured: retry within budget
            hint=None if not refused else f"the PACS must accept the calling AE title {calling_ae!r}",
        )
    try:
        for path, meta in zip(files, metas, strict=True):
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code is None:
                raise ForwardError(f"{dest}: no C-STORE answer (aborted or timed out)", transient=True)
            if code in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or success with a coercion warning
                continue
            raise ForwardError(
                f"{dest}: C-STORE of {meta.MediaStorageSOPInstanceUID} failed with status 0x{code:04X}",
                transient=code in _TRANSIENT_STATUS,
            )
    except (OSError, RuntimeError, ValueError) as e:  # pynetdicom raises these when the link breaks
        raise ForwardError(f"{dest}: C-STORE interrupted: {e}", transient=True) from e
    finally:
        if assoc.is_established:
            assoc.release()


def stow_rs(files: Sequence[Path], base_url: str, *, timeout_s: float = 30.0) -> None:
    """POST the files to ``base_url``/studies as one multipart/related application/dicom request."""
    boundary = f"cxr-{uuid.uuid4().hex}"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes() + b"\r\n"
        for f in files
    ) + (b"--" + boundary.encode() + b"--\r\n")
    req = urllib.request.Request(  # noqa: S310 (the operator's own --forward-url)
        f"{base_url}/studies",
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            if resp.status == 200:
                return
            raise ForwardError(
                f"{base_url}: STOW-RS answered {resp.status} (some objects not stored)", transient=False
            )
    except urllib.error.HTTPError as e:
        transient = e.code in (408, 429) or e.code >= 500
        raise ForwardError(
            f"{base_url}: STOW-RS answered HTTP {e.code} {e.reason}", transient=transient
        ) from e
    except (urllib.error.URLError, OSError) as e:
        raise ForwardError(f"{base_url}: STOW-RS failed: {getattr(e, 'reason', e)}", transient=True) from e
