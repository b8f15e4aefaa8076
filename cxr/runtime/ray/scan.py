"""Takes a ``RayScanConfig``; scans its files across a Ray cluster and makes the rows and result a local scan
would."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from cxr.errors import ConfigError, DataError
from cxr.runtime.predictor import Predictor
from cxr.runtime.ray.cluster import RayConnection, connect, disconnect
from cxr.runtime.ray.config import RayScanConfig
from cxr.runtime.ray.inputs import find_inputs, is_url, manifest_inputs
from cxr.runtime.ray.pipeline import OrderedRows, stream_rows
from cxr.runtime.results import PreviousResults, ResultLayout, open_scan_output, previous_results
from cxr.runtime.scan import ScanConfig, ScanResult, _no_images
from cxr.session import SessionConfig
from cxr.spec import Prediction

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("cuda", "tensorrt")


@dataclass(frozen=True)
class RayScanResult:
    scan: ScanResult
    model: dict[str, Any]  # Predictor.describe() with the provider the actors really used
    address: str
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    read: str
    nodes: int
    startup_seconds: float  # joining or starting Ray (not in scan.seconds)
    first_rows_seconds: float  # scan start to the first rows written (actor start-up included)

    @property
    def exit_code(self) -> int:
        return self.scan.exit_code

    def to_dict(self) -> dict[str, object]:
        ray_info = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[2:]}  # after scan, model
        return {**self.scan.to_dict(), "engine": "ray", "ray": ray_info}


def list_inputs(cfg: RayScanConfig) -> list[str]:
    """The files the scan reads, in scan order (the ``path`` column of the rows)."""
    if cfg.manifest is not None:
        return manifest_inputs(cfg.manifest, cfg.source, cfg.split)
    names = find_inputs(cfg.source, recursive=cfg.recursive, include=cfg.include, exclude=cfg.exclude)
    if not names:
        if is_url(cfg.source):
            raise DataError(f"no images found in {cfg.source}", hint="check the URL, or add --recursive")
        raise _no_images(ScanConfig(Path(cfg.source), cfg.recursive, cfg.include, cfg.exclude))
    return names


def _read_mode(cfg: RayScanConfig, names: Sequence[str]) -> str:
    urls = any(is_url(n) for n in names)
    if cfg.read == "path" and urls:
        raise ConfigError(
            "object-storage URLs cannot be opened as paths by the actors",
            hint="use read mode 'bytes' or 'auto'",
        )
    return cfg.read if cfg.read != "auto" else ("bytes" if urls else "path")


def _model_header(cfg: RayScanConfig) -> tuple[tuple[str, ...], str, dict[str, Any]]:
    """Classes, model id and description, from a CPU session on the driver that never runs the model."""
    session = SessionConfig(provider="cpu", threads=1)
    predictor = Predictor.from_path(cfg.model, replace(cfg.predictor, session=session))
    return predictor.classes, predictor.model_id, predictor.describe()


def _gpus_per_actor(cfg: RayScanConfig, conn: RayConnection) -> float:
    if cfg.gpus_per_actor is not None:
        return cfg.gpus_per_actor
    provider = cfg.predictor.session.provider
    if conn.gpus > 0 and (provider in GPU_PROVIDERS or provider == "auto"):
        return 1.0
    if provider in GPU_PROVIDERS:
        log.warning("provider %s asked for, but the Ray cluster has no GPUs: actors run on the CPU", provider)
    return 0.0


def _actor_count(cfg: RayScanConfig, conn: RayConnection, gpus: float) -> int:
    if cfg.actors is not None:
        n = cfg.actors
    elif gpus > 0:
        n = max(1, int(conn.gpus // gpus))
    else:
        n = max(1, int(conn.cpus // cfg.cpus_per_actor))
    if n * cfg.cpus_per_actor > conn.cpus or n * gpus > conn.gpus:
        log.warning(
            "%d actors x (%g CPU, %g GPU) is more than the cluster's %g CPUs, %g GPUs: some wait for nodes",
            n, cfg.cpus_per_actor, gpus, conn.cpus, conn.gpus,
        )  # fmt: skip
    return n


def _rows_per_block(cfg: RayScanConfig, n: int, actors: int) -> int:
    bs = cfg.predictor.batch_size
    batches = cfg.batches_per_block or min(8, max(1, math.ceil(n / (bs * actors * 4))))
    return bs * batches


def ray_scan(
    cfg: RayScanConfig,
    *,
    stream: TextIO | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[Sequence[Prediction]], None] | None = None,
) -> RayScanResult:
    """Predict every selected file on a Ray cluster; rows go to ``cfg.output`` (or ``stream``), in scan order.
    ``on_start(to_do, skipped)`` runs once the file list is known, ``on_batch(preds)`` after each write."""
    names = list_inputs(cfg)
    classes, model_id, model_info = _model_header(cfg)
    if cfg.output is None and stream is None:
        raise DataError("scan needs an output file or a stream to write rows to")
    layout = ResultLayout(tuple(classes), model_id, tuple(model_info.get("members") or ()))
    previous = PreviousResults()  # refuses a bad output now, before Ray starts (nothing is written)
    if cfg.output is not None:
        previous = previous_results(cfg.output, layout, resume=cfg.resume, overwrite=cfg.overwrite)
    done = previous.paths | {os.path.abspath(p) for p in previous.paths if not is_url(p)}
    todo = [n for n in names if n not in done and (is_url(n) or os.path.abspath(n) not in done)]
    mode = _read_mode(cfg, names)

    t0 = time.perf_counter()
    if todo:
        conn = connect(
            cfg.address,
            local_cpus=cfg.local_cpus,
            connect_timeout_s=cfg.connect_timeout_s,
            ray_logs=cfg.ray_logs,
        )
    else:  # everything is already in the output (resume): no cluster needed
        conn = RayConnection(address="", started=False, cpus=0.0, gpus=0.0, nodes=0)
    startup = time.perf_counter() - t0
    try:
        gpus = _gpus_per_actor(cfg, conn) if todo else 0.0
        actors = _actor_count(cfg, conn, gpus) if todo else 0
        per_block = _rows_per_block(cfg, len(todo), max(actors, 1))
        actors = min(actors, math.ceil(len(todo) / per_block))
        writer, _ = open_scan_output(
            cfg.output, stream, cfg.stream_format, layout, resume=cfg.resume, overwrite=cfg.overwrite
        )
        if on_start is not None:
            on_start(len(todo), len(names) - len(todo))
        rows = OrderedRows(writer, on_batch)
        try:
            if todo:
                stream_rows(cfg, todo, mode, model_id, per_block, actors, gpus, rows, model_info["provider"])
        finally:
            if cfg.output is not None:
                writer.stream.close()
        seconds = time.perf_counter() - rows.started
    finally:
        disconnect(conn)
    tally = rows.tally
    if len(tally.providers) > 1:
        log.warning("actors ran on different providers: %s", dict(tally.providers))
    provider = rows.provider(default=model_info["provider"])
    scan = tally.result(  # what a local scan of the same files would return
        classes,
        seconds,
        folder=str(cfg.manifest if cfg.manifest is not None else cfg.source),
        found=len(names),
        skipped=len(names) - len(todo),
        provider=provider,
        model_id=model_id,
        output=None if cfg.output is None else str(cfg.output),
    )
    info = {
        **model_info,
        "provider": provider,
        "providers": sorted(tally.providers),
        "requested_provider": cfg.predictor.session.provider,
        "provider_warnings": [],
    }
    first = rows.first_rows_seconds if rows.first_rows_seconds is not None else seconds
    return RayScanResult(
        scan, info, conn.address, actors, cfg.cpus_per_actor, gpus, mode, conn.nodes, round(startup, 3), first
    )
