"""The node's worker threads: spooled instance -> prediction -> SR + SC in the spool -> sent to the PACS.

Takes: an open ``Spool``, a ``Predictor``, a ``Responder`` (prediction -> SR and SC datasets; by default the
highdicom objects of ``cxr.dicom``), a ``Destination`` and a ``Backoff``. Makes: ``Worker`` whose
``submit(uid)`` queues a received instance and whose ``replay()`` queues what the spool still holds.
One thread predicts (the model runs one image at a time, in arrival order); a second makes each predicted
instance's results (the SR and SC, their commit to the spool; the picture and the SC's file on a helper thread
meanwhile) while the model already runs on the next one, and alone moves instances out of received/; a third
sends, retrying with backoff while the destination is down, so predictions go on spooling during an outage. A failure of one instance moves it to
failed/ with the reason and never stops a thread. One audit line per instance (logger ``cxr.audit``,
``audit_line``) when it reaches sent/ or failed/.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cxr.dicom.forward import Backoff, Destination, ForwardError, send
from cxr.dicom.spool import Spool, write_durably
from cxr.errors import first_line
from cxr.spec import Prediction

log = logging.getLogger(__name__)
audit_log = logging.getLogger("cxr.audit")
_STOP = ""
_IN_HAND = 2  # predicted instances waiting for their results (each holds its decoded image)


class Responder(Protocol):
    """Makes the two result objects (SR, SC) of one predicted instance in two parts, so that all but the
    picture is made while the picture is drawn on another thread (Pillow lets go of the GIL while it resizes
    and blends): ``documents`` gives the SR and the SC without its pixels, ``with_picture`` the SC with them."""

    def documents(self, source: bytes, pred: Prediction) -> tuple[Any, Any]: ...

    def with_picture(self, sc: Any, rgb: np.ndarray, name: str) -> Any: ...


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_line(event: str, **fields: Any) -> str:
    """``event=... key=value ...``: values with spaces or quotes are JSON-quoted; never pixels or names."""

    def fmt(v: Any) -> str:
        s = "-" if v is None or v == "" else str(v)
        return json.dumps(s) if any(c in s for c in ' "=\n') else s

    return " ".join([f"time={fmt(now())}", f"event={event}", *(f"{k}={fmt(v)}" for k, v in fields.items())])


def result_text(pred: Prediction) -> str:
    """The result column of the audit line: the class, or not_assessable:CLASS:reasons, or the error."""
    if pred.error is not None:
        return f"error:{first_line(Exception(pred.error), 160)}"
    if pred.assessable is False:
        return f"not_assessable:{pred.label}:{','.join(r.code for r in pred.reasons)}"
    return f"{pred.label}"


def secondary_capture_picture(image: np.ndarray, heat: np.ndarray | None, pred: Prediction) -> np.ndarray:
    """The secondary capture's RGB pixels: the one place the node draws (``cxr.runtime.overlay``)."""
    from cxr.runtime.overlay import render_overlay

    return np.asarray(render_overlay(image, pred, heat), dtype=np.uint8)  # an RGB canvas already


def part10(ds: Any) -> bytes:
    """A dataset as DICOM file bytes (preamble, file meta), as the spool keeps it."""
    from pydicom import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_part10(ds: Any, path: Path) -> None:
    """``part10(ds)`` written straight into the new file ``path``, fsynced (``spool.write_durably``)."""
    from pydicom import dcmwrite

    write_durably(path, lambda f: dcmwrite(f, ds, enforce_file_format=True))


class Worker:
    """The predict and send threads of one node (see the module docstring)."""

    def __init__(
        self,
        spool: Spool,
        predictor: Any,
        responder: Responder,
        dest: Destination,
        *,
        calling_ae: str,
        backoff: Backoff,
        model_sha256: str,
        send_timeout_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.predictor = predictor
        self.responder = responder
        self.dest = dest
        self.calling_ae = calling_ae
        self.backoff = backoff
        self.model_sha256 = model_sha256
        self.send_timeout_s = send_timeout_s
        self._to_predict: queue.Queue[str] = queue.Queue()
        self._to_respond: queue.Queue[_Predicted | str] = queue.Queue(maxsize=_IN_HAND)
        self._to_send: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._draw = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-draw")
        self._threads = [
            threading.Thread(
                target=self._loop, args=(self._to_predict, self._predict_one), name="cxr-predict"
            ),
            threading.Thread(
                target=self._loop, args=(self._to_respond, self._respond_one), name="cxr-respond"
            ),
            threading.Thread(target=self._loop, args=(self._to_send, self._send_one), name="cxr-send"),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.daemon = True
            t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the instance in hand; what is still queued stays in the spool for the next start."""
        self._stop.set()
        self._to_predict.put(_STOP)
        with contextlib.suppress(queue.Full):  # full: the respond thread sees the stop flag on its next get
            self._to_respond.put_nowait(_STOP)
        self._to_send.put(_STOP)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)
        self._draw.shutdown(wait=False, cancel_futures=True)

    def submit(self, uid: str) -> None:
        self._to_predict.put(uid)

    def replay(self) -> tuple[int, int]:
        """Queue what the spool holds from before (received -> predict, predicted -> send)."""
        received, predicted = self.spool.pending()
        for uid in predicted:
            self._to_send.put(uid)
        for uid in received:
            self._to_predict.put(uid)
        if received or predicted:
            log.info("spool replay: %d to predict, %d to send", len(received), len(predicted))
        return len(received), len(predicted)

    def _loop(self, q: queue.Queue[Any], step: Callable[[Any], None]) -> None:
        while not self._stop.is_set():
            uid = q.get()
            try:
                if uid != _STOP and not self._stop.is_set():
                    step(uid)
            except Exception:  # one instance must never stop the node: log it; it stays in the spool
                log.exception("unexpected error on %s; it stays in the spool for the next start", uid)
            finally:
                q.task_done()

    # ------------------------------------------------------------------ received -> predicted
    def _predict_one(self, uid: str) -> None:
        """Decode and run the model (the only step on the model's thread); the rest is ``_respond_one``'s."""
        if self.spool.state(uid) != "received":
            return  # already handled (a resend queued twice)
        path = self.spool.source(uid)
        try:
            data = path.read_bytes()
            one = self.predictor.explain(data, str(path))  # one decode, one run (with the heatmap if any)
        except Exception as e:  # an unreadable spool file or a predictor failure: failed/, like a bad image
            log.warning("%s: could not predict it", uid, exc_info=True)
            self._put_respond(_Predicted(uid, b"", None, f"{type(e).__name__}: {first_line(e)}", now()))
            return
        self._put_respond(_Predicted(uid, data, one, None, now()))

    def _put_respond(self, item: _Predicted) -> None:
        while not self._stop.is_set():  # bounded: the model waits while two results are being made
            try:
                self._to_respond.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _respond_one(self, item: _Predicted) -> None:
        """The SR and SC, written into a staging folder, then committed: received/ -> predicted/ (or failed/).
        Two threads: this one makes the SR and the SC without its pixels and writes the SR; the draw thread
        meanwhile draws the picture, puts it into the SC and writes the SC (the largest file)."""
        uid = item.uid
        if self.spool.state(uid) != "received":
            return  # a resend queued twice, already committed by its first round
        meta = self.spool.received_meta(uid)
        staged = None
        try:
            if item.error is not None:
                raise _NotPredicted(item.error)
            one = item.explained
            pred = one.prediction
            if pred.error is not None or one.image is None:
                raise _NotPredicted(pred.error or "not decoded")
            staged = self.spool.staging(uid)
            shell: Future[Any] = Future()
            sc_job = self._draw.submit(self._draw_sc, one, shell, staged / "sc.dcm")
            try:
                sr, sc = self.responder.documents(item.data, pred)
                shell.set_result(sc)
                write_part10(sr, staged / "sr.dcm")
            except BaseException as e:
                if not shell.done():
                    shell.set_exception(e)  # the draw thread gives up waiting for it
                raise
            finally:
                wait([sc_job])  # the draw thread is done with the staging folder, whatever happened
            sc_job.result()
        except Exception as e:  # undecodable after all, or a builder failure: failed/, with the source
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            reason = str(e) if isinstance(e, _NotPredicted) else f"{type(e).__name__}: {first_line(e)}"
            if not isinstance(e, _NotPredicted):
                log.warning("%s: could not make its results", uid, exc_info=True)
            self.spool.mark_failed_received(
                uid, {**meta, "stage": "predict", "reason": reason, "failed_at": now()}
            )
            self._finish("failed", uid, meta, result=f"error:{first_line(Exception(reason), 160)}")
            return
        record = {
            **meta,
            "sop_instance_uid": uid,
            "model_sha256": self.model_sha256,
            "prediction": {k: v for k, v in pred.to_dict().items() if k != "source"},
            "result": result_text(pred),
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "sc_sop_instance_uid": str(sc.SOPInstanceUID),
            "inferred_at": item.inferred_at,
            "predicted_at": now(),
        }
        self.spool.mark_predicted_staged(uid, staged, record)
        self._to_send.put(uid)

    def _draw_sc(self, one: Any, shell: Future[Any], path: Path) -> None:
        """On the draw thread: the picture, then (once ``shell`` holds the SC without pixels) the SC, written."""
        rgb = secondary_capture_picture(one.image, one.heatmap, one.prediction)
        sc = self.responder.with_picture(shell.result(), rgb, one.prediction.source)
        write_part10(sc, path)

    # ------------------------------------------------------------------ predicted -> sent
    def _send_one(self, uid: str) -> None:
        if self.spool.state(uid) != "predicted":
            return
        first_try = now()  # the results were committed by then: the send thread takes them in commit order
        folder = self.spool.folder("predicted", uid)
        files = [folder / name for name in ("sr.dcm", "sc.dcm")]
        started, tries = time.monotonic(), 0
        for delay in self.backoff.delays():
            tries += 1
            try:
                send(files, self.dest, calling_ae=self.calling_ae, timeout_s=self.send_timeout_s)
            except ForwardError as e:
                spent = time.monotonic() - started
                if not e.transient or spent + delay > self.backoff.budget_s:
                    why = e.message if not e.transient else f"{e.message} (gave up after {tries} tries)"
                    self._give_up(uid, why, tries)
                    return
                log.warning("%s: %s; retry %d in %.1f s", uid, e.message, tries, delay)
                if self._stop.wait(delay):
                    return  # stopping: it stays in predicted/ and is sent after the next start
                continue
            record = self.spool.record("predicted", uid)
            update = {
                "sent_to": str(self.dest),
                "send_started_at": first_try,
                "sent_at": now(),
                "tries": tries,
            }
            self.spool.move(uid, "sent", update)
            self._finish("sent", uid, record, result=record.get("result"), sent_to=str(self.dest))
            return

    def _give_up(self, uid: str, reason: str, tries: int) -> None:
        record = self.spool.record("predicted", uid)
        update = {"stage": "send", "reason": reason, "tries": tries, "failed_at": now()}
        self.spool.move(uid, "failed", update)
        self._finish("failed", uid, record, result=record.get("result"), error=reason)

    def _finish(self, event: str, uid: str, meta: Mapping[str, Any], **fields: Any) -> None:
        audit_log.info(
            audit_line(
                event,
                calling_ae=meta.get("calling_ae"),
                peer=meta.get("peer"),
                sop_instance_uid=uid,
                model_sha256=self.model_sha256,
                received_at=meta.get("received_at"),
                **fields,
            )
        )


@dataclass(frozen=True)
class _Predicted:
    """One instance between the model and its results: its bytes and ``Explained`` (or why there is none)."""

    uid: str
    data: bytes
    explained: Any
    error: str | None
    inferred_at: str  # when the model was done with it (the spool record keeps it beside predicted_at)


class _NotPredicted(Exception):
    """The predictor returned an error row for the instance (it could not be decoded)."""
