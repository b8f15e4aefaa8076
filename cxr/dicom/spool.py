"""The node's durable spool: every received instance and its results live on disk until they are sent.

Takes: a folder. Makes: ``Spool`` with one method per step; each step is one atomic rename, so a crash at
any point leaves every instance in exactly one of these places (see docs/dicom-node.md):

    received/<SOP Instance UID>.dcm (+ .json: who sent it, when)   stored, not yet predicted
    predicted/<uid>/ sr.dcm sc.dcm record.json                     results made, not yet sent
    sent/<uid>/      sr.dcm sc.dcm record.json                     delivered (record names where and when)
    failed/<uid>/    record.json (+ source.dcm, or sr.dcm sc.dcm)  given up, with the reason; never deleted
    tmp/                                                           half-written files, emptied on open

Files are written to tmp/ (or beside their target), fsynced, then renamed with ``os.replace``; folders
are built in tmp/ and renamed whole. Names are SOP Instance UIDs, checked to be UIDs first, so a resend of
the same instance lands on the same name (idempotent) and a hostile UID cannot name a path. One node per
spool: ``open`` takes an exclusive ``flock`` on spool.lock (released by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cxr.errors import ConfigError

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STAGES = ("received", "predicted", "sent", "failed")
RECORD = "record.json"
State = Literal["received", "predicted", "sent", "failed"]


def valid_uid(uid: str) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a file name."""
    return len(uid) <= 64 and bool(UID_RE.match(uid))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_durably(path: Path, content: bytes | Callable[[BinaryIO], Any]) -> None:
    """Create ``path`` with ``content`` (bytes, or a function that writes into the open file) and fsync it: a
    new file in a folder that is renamed into place afterwards (``write_atomic`` replaces a file in place)."""
    with path.open("wb") as f:
        if isinstance(content, bytes):
            f.write(content)
        else:
            content(f)
        f.flush()
        os.fsync(f.fileno())


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data), indent=1, sort_keys=True).encode()


class Spool:
    """The spool folder of one running node (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._lock_file: Any = None

    def open(self) -> Spool:
        """Create the folders, take the spool's lock, drop half-written files; ConfigError if in use."""
        try:
            for name in (*STAGES, "tmp"):
                (self.root / name).mkdir(parents=True, exist_ok=True)
            lock = (self.root / "spool.lock").open("a+")
        except OSError as e:
            raise ConfigError(
                f"cannot use {self.root} as the spool: {e.strerror or e}",
                hint="pass --spool a writable folder (it is created if missing)",
                path=self.root,
            ) from e
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.close()
            raise ConfigError(
                f"spool {self.root} is in use by another running node",
                hint="give each `cxr listen` its own --spool folder",
                path=self.root,
            ) from e
        self._lock_file = lock
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        for stage in STAGES:  # a crash inside write_atomic leaves a .part file beside its target
            for part in (self.root / stage).rglob(".*.part"):
                part.unlink(missing_ok=True)
        for meta in (self.root / "received").glob("*.json"):  # metadata whose instance never landed
            if not meta.with_suffix(".dcm").exists():
                meta.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ where things are
    def source(self, uid: str) -> Path:
        return self.root / "received" / f"{uid}.dcm"

    def folder(self, stage: State, uid: str) -> Path:
        return self.root / stage / uid

    def state(self, uid: str) -> State | None:
        if self.source(uid).exists():
            return "received"
        for stage in ("predicted", "sent", "failed"):
            if (self.root / stage / uid).is_dir():
                return stage  # type: ignore[return-value]
        return None

    def pending(self) -> tuple[list[str], list[str]]:
        """(received but not predicted, predicted but not sent), oldest first: what a restart replays."""

        def by_age(paths: list[Path]) -> list[Path]:
            return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))

        received = [p.stem for p in by_age(list((self.root / "received").glob("*.dcm")))]
        predicted = [p.name for p in by_age([p for p in (self.root / "predicted").iterdir() if p.is_dir()])]
        return received, [u for u in predicted if u not in received]

    def record(self, stage: State, uid: str) -> dict[str, Any]:
        path = self.folder(stage, uid) / RECORD
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def received_meta(self, uid: str) -> dict[str, Any]:
        path = self.source(uid).with_suffix(".json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ the steps
    def receive(self, uid: str, data: bytes, meta: Mapping[str, Any]) -> State | None:
        """Store one received instance; returns the state it was already in (None: new).

        An instance already predicted or sent is not stored again (the caller acknowledges the resend and
        does nothing more); one still in received/ is overwritten; one in failed/ is taken again.
        """
        if not valid_uid(uid):
            raise ValueError(f"not a UID: {uid[:80]!r}")
        with self._lock:
            before = self.state(uid)
            if before in ("predicted", "sent"):
                return before
            write_atomic(self.source(uid).with_suffix(".json"), _json(meta))
            write_atomic(self.source(uid), data)  # the commit point: from here the instance is spooled
            return before

    def mark_predicted(self, uid: str, files: Mapping[str, bytes], record: Mapping[str, Any]) -> Path:
        """received/<uid>.dcm -> predicted/<uid>/ with ``files`` (name -> bytes) and record.json."""
        staged = self.staging(uid)
        for name, data in files.items():
            write_durably(staged / name, data)
        return self.mark_predicted_staged(uid, staged, record)

    def mark_failed_received(self, uid: str, record: Mapping[str, Any]) -> Path:
        """received/<uid>.dcm -> failed/<uid>/source.dcm + record.json (it could not be predicted)."""
        with self._lock:
            src = self.source(uid)
            files = {"source.dcm": src.read_bytes()} if src.exists() else {}
            target = self._commit_folder("failed", uid, files, record)
            src.unlink(missing_ok=True)
            src.with_suffix(".json").unlink(missing_ok=True)
            return target

    def move(self, uid: str, to: Literal["sent", "failed"], update: Mapping[str, Any]) -> Path:
        """predicted/<uid>/ -> sent/ or failed/, its record.json updated with ``update`` first."""
        with self._lock:
            src = self.folder("predicted", uid)
            record = {**self.record("predicted", uid), **update}
            write_atomic(src / RECORD, _json(record))
            dst = self.folder(to, uid)
            if dst.exists():  # an earlier round of the same instance: the new one replaces it
                shutil.rmtree(dst)
            os.rename(src, dst)
            _fsync_dir(dst.parent)
            _fsync_dir(src.parent)
            return dst

    def staging(self, uid: str) -> Path:
        """A new folder in tmp/ for one instance's result files (each written with ``write_durably``), put in
        place whole by ``mark_predicted_staged``; a crash before that leaves it in tmp/, emptied on open."""
        if not valid_uid(uid):
            raise ValueError(f"not a UID: {uid[:80]!r}")
        build = self.root / "tmp" / f"{uid}.{uuid.uuid4().hex}"
        build.mkdir()
        return build

    def mark_predicted_staged(self, uid: str, staged: Path, record: Mapping[str, Any]) -> Path:
        """``mark_predicted`` for result files already written durably into ``staging(uid)``'s folder."""
        with self._lock:
            target = self._commit_staged("predicted", uid, staged, record)
            self.source(uid).unlink(missing_ok=True)
            self.source(uid).with_suffix(".json").unlink(missing_ok=True)
            shutil.rmtree(self.folder("failed", uid), ignore_errors=True)
            return target

    def _commit_folder(
        self, stage: State, uid: str, files: Mapping[str, bytes], record: Mapping[str, Any]
    ) -> Path:
        build = self.staging(uid)
        for name, data in files.items():
            write_durably(build / name, data)
        return self._commit_staged(stage, uid, build, record)

    def _commit_staged(self, stage: State, uid: str, build: Path, record: Mapping[str, Any]) -> Path:
        write_durably(build / RECORD, _json(record))
        _fsync_dir(build)
        target = self.folder(stage, uid)
        if target.exists():
            shutil.rmtree(target)
        os.rename(build, target)
        _fsync_dir(target.parent)
        return target
