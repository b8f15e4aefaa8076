"""`cxr listen`'s DICOM node: a Storage SCP for CR, DX and Secondary Capture images, plus Verification.

Takes: a ``NodeConfig``. Makes: ``DicomNode`` (``start()`` / ``stop()``): a pynetdicom server whose C-STORE
handler only checks and spools each instance (answering in milliseconds), and a ``Worker`` that predicts
it, makes its SR and SC and sends them to the PACS. What each answer means is in docs/dicom-node.md:
0x0000 stored (also for an instance already handled: resends are idempotent), 0xA700 out of resources
(larger than the limit, or the spool cannot be written), 0xA900 dataset does not match its SOP class
(command and dataset disagree, no usable UID, no pixel data, native pixel data shorter than its header
says), 0xC000 cannot understand (the bytes are not a DICOM dataset).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.dicom._identity import ModelIdentity
from cxr.dicom.forward import Backoff, Destination
from cxr.dicom.results import result_documents
from cxr.dicom.sc import MANUFACTURER as SC_MANUFACTURER
from cxr.dicom.sc import with_pixels
from cxr.dicom.spool import Spool, valid_uid
from cxr.dicom.worker import Responder, Worker, audit_line, now
from cxr.errors import ConfigError, first_line

log = logging.getLogger(__name__)
audit_log = logging.getLogger("cxr.audit")

VERIFICATION = "1.2.840.10008.1.1"
IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_MIB = 1024 * 1024


@dataclass(frozen=True)
class NodeConfig:
    """Everything `cxr listen` is given. ``host`` defaults to loopback like `cxr serve` (the container sets
    0.0.0.0); ``allow_ae`` empty accepts any calling AE title; exactly one of ``forward`` (AE) or a STOW-RS
    ``Destination.stow`` URL is the destination."""

    model: Path
    forward: Destination
    spool: Path
    port: int = 11112
    host: str = "127.0.0.1"
    ae_title: str = "CXR"
    allow_ae: tuple[str, ...] = ()
    max_pdu: int = 262_144
    max_associations: int = 8
    max_instance_bytes: int = 256 * _MIB
    backoff: Backoff = field(default_factory=Backoff)
    send_timeout_s: float = 30.0
    provider: str = "auto"
    threads: int | None = None
    precision: str = "auto"  # int8: the INT8 graph, and secondary captures without a heatmap

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title) <= 16 or "\\" in self.ae_title:
            raise ConfigError(f"--ae-title {self.ae_title!r} must be 1-16 characters without a backslash")
        bad = [a for a in self.allow_ae if not 0 < len(a) <= 16]
        if bad:
            raise ConfigError(f"--allow-ae {','.join(bad)!r}: AE titles are 1-16 characters")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port", hint="e.g. --port 11112 (0: any free)")
        if self.max_associations < 1 or self.max_instance_bytes < 1 or self.max_pdu < 0:
            raise ConfigError(
                "--max-associations and --max-instance-mb must be >= 1, --max-pdu >= 0 (0: no limit)"
            )


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes, then every compressed one that an installed pydicom decoder can decode."""
    from pydicom.pixels import get_decoder

    from cxr.imaging.dicom import DECODER_HINTS

    usable = []
    for ts in DECODER_HINTS:
        try:
            if get_decoder(ts).is_available:
                usable.append(ts)
        except (NotImplementedError, ValueError):
            continue
    return [*UNCOMPRESSED, *usable]


def cxr_responder(predictor: Any) -> tuple[Responder, str]:
    """The default responder (``cxr.dicom``'s highdicom SR and secondary capture) and the model's SHA-256."""
    model = ModelIdentity.from_predictor(predictor)
    return CxrResponder(model), model.sha256


@dataclass(frozen=True)
class CxrResponder:
    """``Responder`` with ``cxr.dicom``'s results for one model."""

    model: ModelIdentity

    def documents(self, source: bytes, pred: Any) -> tuple[Any, Any]:
        return result_documents(source, pred, self.model)

    def with_picture(self, sc: Any, rgb: np.ndarray, name: str) -> Any:
        return with_pixels(sc, rgb, name)


def open_predictor(cfg: NodeConfig) -> Any:
    """The model, one image at a time; its heatmap twin when it is beside it (the secondary capture then
    shows where the ensemble looked), carrying the plain model's identity."""
    from cxr.runtime import Predictor, PredictorConfig, SessionConfig
    from cxr.runtime.locate import with_heatmap_twin

    session = SessionConfig(provider=cfg.provider, threads=cfg.threads, precision=cfg.precision)
    pcfg = PredictorConfig(session=session, batch_size=1)
    return Predictor.from_path(*with_heatmap_twin(cfg.model, pcfg))


_NAME_HINT = r"The string .* is unlikely to represent the intended person name"


class DicomNode:
    """The running node (see the module docstring). ``predictor``: an open one (the benchmark shares its own)."""

    def __init__(self, cfg: NodeConfig, *, predictor: Any = None) -> None:
        self.cfg = cfg
        self._predictor = predictor
        self.spool = Spool(cfg.spool)
        self.worker: Worker | None = None
        self._server: Any = None
        self._stopped = threading.Event()
        self.model_sha256 = ""

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.cfg.port

    def start(self) -> DicomNode:
        """Open the spool, load the model, replay the spool, then listen (non-blocking)."""
        from pynetdicom import AE, evt

        # highdicom's person-name hint quotes the patient's name, and the builders' warnings.catch_warnings()
        # cannot hold it back once the node's threads run (that context swaps the process's filters, so two
        # threads undo each other's): filtered for the whole process before any of them starts
        warnings.filterwarnings("ignore", message=_NAME_HINT, category=UserWarning)
        self.spool.open()
        try:
            if self._predictor is None:
                self._predictor = open_predictor(self.cfg)
            responder, self.model_sha256 = cxr_responder(self._predictor)
            self.worker = Worker(
                self.spool,
                self._predictor,
                responder,
                self.cfg.forward,
                calling_ae=self.cfg.ae_title,
                backoff=self.cfg.backoff,
                model_sha256=self.model_sha256,
                send_timeout_s=self.cfg.send_timeout_s,
            )
            self.worker.start()
            self.worker.replay()
            ae = AE(ae_title=self.cfg.ae_title)
            ae.maximum_associations = self.cfg.max_associations
            ae.maximum_pdu_size = self.cfg.max_pdu
            ae.require_calling_aet = list(self.cfg.allow_ae)
            syntaxes = accepted_transfer_syntaxes()
            for sop_class in IMAGE_STORAGE:
                ae.add_supported_context(sop_class, syntaxes)
            ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED[:2]))
            handlers: list[Any] = [
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, lambda event: 0x0000),
                (evt.EVT_REJECTED, self._on_rejected),
            ]
            try:
                self._server = ae.start_server(
                    (self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers
                )
            except OSError as e:
                raise ConfigError(
                    f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}",
                    hint="choose a free --port (ports below 1024 need privileges; 11112 is DICOM's)",
                ) from e
        except BaseException:
            self.stop()
            raise
        log.info(
            "cxr listen: AE %s on %s:%d, forwarding to %s, spool %s",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            self.cfg.forward,
            self.cfg.spool,
        )
        return self

    def stop(self) -> None:
        """Stop listening, let the instance in hand finish, release the spool. Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.spool.close()
        self._stopped.set()

    def wait(self) -> None:
        """Block until ``stop()`` (the CLI's main thread waits here for Ctrl-C or SIGTERM)."""
        while not self._stopped.wait(0.5):
            pass

    # ------------------------------------------------------------------ the SCP's handlers
    def _on_rejected(self, event: Any) -> None:
        who = event.assoc.requestor
        audit_log.info(
            audit_line(
                "rejected", calling_ae=who.ae_title, peer=f"{who.address}:{who.port}", reason="association"
            )
        )

    def _on_store(self, event: Any) -> Any:
        from pydicom import Dataset

        who = event.assoc.requestor
        meta = {
            "calling_ae": str(who.ae_title).strip(),
            "peer": f"{who.address}:{who.port}",
            "received_at": now(),
            "sop_class_uid": str(event.request.AffectedSOPClassUID),
        }
        uid = str(event.request.AffectedSOPInstanceUID)
        try:
            code, why = self._store(event, uid, meta)
        except Exception as e:  # never let one instance take the association (or the node) down
            log.exception("C-STORE of %s failed unexpectedly", uid)
            code, why = OUT_OF_RESOURCES, f"node error: {type(e).__name__}"
        if code == 0x0000 and why is None:
            return 0x0000
        if code != 0x0000:
            log.warning("C-STORE %s from %s refused (0x%04X): %s", uid, meta["calling_ae"], code, why)
        event_name = (
            "refused" if code != 0x0000 else "ignored" if "cxr result" in (why or "") else "duplicate"
        )
        fields = {**meta, "sop_instance_uid": uid[:64], "model_sha256": self.model_sha256}
        audit_log.info(audit_line(event_name, status=f"0x{code:04X}", detail=why, **fields))
        status = Dataset()
        status.Status = code
        if why and code != 0x0000:
            status.ErrorComment = why[:64]
        return status

    def _store(self, event: Any, uid: str, meta: dict[str, Any]) -> tuple[int, str | None]:
        """(status, why) for one C-STORE: checks, then the spool."""
        size = len(event.request.DataSet.getbuffer())
        if size > self.cfg.max_instance_bytes:
            return (
                OUT_OF_RESOURCES,
                f"instance of {size} bytes is over the {self.cfg.max_instance_bytes} limit",
            )
        if not valid_uid(uid):
            return NOT_MATCHING, "Affected SOP Instance UID is not a valid UID"
        try:
            ds = event.dataset
            ds_uid, ds_class = str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", ""))
            has_pixels = "PixelData" in ds
        except Exception as e:  # pydicom fails on arbitrary bytes in many untyped ways
            return CANNOT_UNDERSTAND, f"not a DICOM dataset: {first_line(e, 40)}"
        if not ds_uid and not ds_class:  # what a forced parse of arbitrary bytes gives
            return CANNOT_UNDERSTAND, "no SOP Class or Instance UID: not a DICOM image dataset"
        if ds_uid != uid or ds_class != meta["sop_class_uid"]:
            return NOT_MATCHING, "SOP Class/Instance UID differ from the C-STORE request"
        if not has_pixels:
            return NOT_MATCHING, "image storage without Pixel Data"
        short = _pixels_short(ds, event.context.transfer_syntax)
        if short:
            return NOT_MATCHING, short
        if ds_class == SECONDARY_CAPTURE and str(ds.get("Manufacturer", "")) == SC_MANUFACTURER:
            return 0x0000, "a cxr result sent back (routing loop?): acknowledged, not predicted"
        if self.worker is None:  # a late association while stopping
            return OUT_OF_RESOURCES, "node is stopping"
        data = event.encoded_dataset(include_meta=True)
        try:
            before = self.spool.receive(uid, data, meta)
        except OSError as e:
            return OUT_OF_RESOURCES, f"spool not writable: {e.strerror or e}"
        if before in ("predicted", "sent"):
            return 0x0000, f"already {before}"
        if before != "received":
            self.worker.submit(uid)
        return 0x0000, None


def _pixels_short(ds: Any, transfer_syntax: Any) -> str | None:
    """Why native pixel data cannot hold Rows x Columns x samples x frames (None: it can, or compressed)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "Rows, Columns or Bits Allocated missing or not a number"
    if rows < 1 or cols < 1 or bits < 1:
        return "Rows, Columns and Bits Allocated must be positive"
    if getattr(transfer_syntax, "is_compressed", False):
        return None
    need = (rows * cols * samples * frames * bits + 7) // 8
    got = len(ds.PixelData or b"")
    return None if got >= need else f"Pixel Data has {got} bytes, the header needs {need}"
