"""Resumable stages: a stage is skipped when its parameters, the key before it and its input files are unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "stages.json"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[], dict[str, Any]]  # returns a small JSON-able summary
    params: dict[str, Any] = field(default_factory=dict)
    inputs: Callable[[], Iterable[Path]] = lambda: ()
    outputs: Callable[[], Iterable[Path]] = lambda: ()


@dataclass(frozen=True)
class StageRecord:
    name: str
    key: str
    ran: bool
    seconds: float
    summary: dict[str, Any]


def _digest_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted({Path(p) for p in paths}):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f).encode())
            if f.is_file():
                st = f.stat()
                # size + mtime_ns is enough to see a changed file without reading gigabytes again
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            else:
                h.update(b"missing")
    return h.hexdigest()


def stage_key(stage: Stage, previous_key: str) -> str:
    h = hashlib.sha256()
    h.update(previous_key.encode())
    h.update(stage.name.encode())
    h.update(json.dumps(stage.params, sort_keys=True, default=str).encode())
    h.update(_digest_files(stage.inputs()).encode())
    return h.hexdigest()[:16]


def run_stages(
    stages: Sequence[Stage],
    run_dir: Path,
    force: Sequence[str] = (),
    on_start: Callable[[Stage, bool], None] | None = None,
    on_end: Callable[[StageRecord], None] | None = None,
) -> list[StageRecord]:
    """Run (or skip) each stage in order; record keys and summaries in ``run_dir/stages.json``."""
    names = [s.name for s in stages]
    unknown = [f for f in force if f not in names and f != "all"]
    if unknown:
        raise ConfigError(
            f"--force {', '.join(unknown)}: no such stage", hint=f"stages are: {', '.join(names)}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    records: list[StageRecord] = []
    prev = ""
    forced = False
    for stage in stages:
        forced = forced or stage.name in force or "all" in force
        key = stage_key(stage, prev)
        cached = state.get(stage.name, {})
        outputs_ok = all(Path(p).exists() for p in stage.outputs())
        skip = not forced and cached.get("key") == key and outputs_ok
        if on_start is not None:
            on_start(stage, skip)
        if skip:
            rec = StageRecord(stage.name, key, False, 0.0, cached.get("summary", {}))
        else:
            t0 = time.perf_counter()
            summary = stage.run()
            rec = StageRecord(stage.name, key, True, time.perf_counter() - t0, summary)
            # the key is recomputed after running: a stage may create the inputs of later stages only
            state[stage.name] = {"key": key, "seconds": rec.seconds, "summary": summary}
            state_path.write_text(json.dumps(state, indent=2, default=str))
        records.append(rec)
        if on_end is not None:
            on_end(rec)
        prev = key + _digest_files(stage.outputs())
    return records
