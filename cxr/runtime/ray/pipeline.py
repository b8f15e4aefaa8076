"""The Ray Data pipeline of a cluster scan: ``PredictorActor`` (one session per actor), the dataset, and
``OrderedRows`` writing what comes back in scan order. Nothing here imports Ray at import time."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import CxrError, ModelError
from cxr.runtime.items import Item
from cxr.runtime.predictor import Predictor, PredictorConfig
from cxr.runtime.ray.cluster import RayJobError, quiet_ray_data
from cxr.runtime.ray.config import RayScanConfig
from cxr.runtime.ray.inputs import is_url
from cxr.runtime.results import ResultWriter
from cxr.runtime.scan import ScanTally
from cxr.spec import Prediction

log = logging.getLogger(__name__)


class PredictorActor:
    """Callable class for ``map_batches``: ``actor(batch) -> {"path": ..., "prediction": ...}``."""

    def __init__(self, model: str, cfg: PredictorConfig, model_id: str, gpu: bool = False) -> None:
        if gpu:
            cfg = replace(cfg, session=replace(cfg.session, device_id=0))
        self.predictor = Predictor.from_path(Path(model), cfg)
        if self.predictor.model_id != model_id:
            raise ModelError(
                f"the model at {model} on this node has id {self.predictor.model_id}, the driver's has "
                f"{model_id}",
                hint="put the same model file at the same path on every node (a shared volume, or the image)",
                path=model,
            )
        for warning in self.predictor.info.warnings:
            log.warning("%s", warning)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        items: list[Item] = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else list(paths)
        preds = [p for chunk in self.predictor.iter_predict(items, names=paths) for p in chunk]
        return {
            "path": np.asarray(paths, dtype=object),
            "prediction": np.asarray([json.dumps(p.to_dict()) for p in preds], dtype=object),
        }


def prediction_from_json(text: str) -> Prediction:
    """The inverse of the actor's ``json.dumps(prediction.to_dict())``."""
    return Prediction.from_dict(json.loads(text))


class OrderedRows:
    """Buffer predictions by index; ``flush`` writes the longest complete prefix."""

    def __init__(
        self, writer: ResultWriter, on_batch: Callable[[Sequence[Prediction]], None] | None = None
    ) -> None:
        self.writer = writer
        self.on_batch = on_batch
        self.next = 0  # index of the first row not yet written
        self.pending: dict[int, Prediction] = {}
        self.tally = ScanTally()
        self.started = time.perf_counter()
        self.first_rows_seconds: float | None = None

    def add(self, index: int, pred: Prediction) -> None:
        """Keep ``pred`` for its place; a row seen before (a retried block) is ignored."""
        if index >= self.next and index not in self.pending:
            self.pending[index] = pred

    def has(self, index: int) -> bool:
        return index < self.next or index in self.pending

    def flush(self) -> None:
        ready: list[Prediction] = []
        while self.next in self.pending:
            ready.append(self.pending.pop(self.next))
            self.next += 1
        if not ready:
            return
        self.writer.write(ready)
        if self.first_rows_seconds is None:
            self.first_rows_seconds = time.perf_counter() - self.started
        self.tally.add(ready)
        if self.on_batch is not None:
            self.on_batch(ready)

    def provider(self, default: str) -> str:
        """The providers the actors ran, most used first (``cuda,cpu`` when some fell back)."""
        return ",".join(p for p, _ in self.tally.providers.most_common()) or default


def _ray_key(read_path: str, mode: str) -> str:
    """The form of a path in Ray's ``path`` column: scheme stripped for URLs (``s3://b/k`` -> ``b/k``)."""
    if mode == "bytes" and is_url(read_path):
        return read_path.split("://", 1)[1]
    return read_path


def _renamed(pred: Prediction, name: str, read_names: Sequence[str]) -> Prediction:
    """The prediction as the local scan names it: its source and error say ``name``."""
    error = pred.error
    if error is not None:
        for other in read_names:
            if other != name:
                error = error.replace(other, name)
    return replace(pred, source=name, error=error)


def _build_dataset(
    ray: Any,
    cfg: RayScanConfig,
    model_id: str,
    read_paths: list[str],
    mode: str,
    per_block: int,
    actors: int,
    gpus: float,
) -> Any:
    if mode == "path":
        import pyarrow as pa

        blocks = [
            pa.table({"path": read_paths[i : i + per_block]}) for i in range(0, len(read_paths), per_block)
        ]
        ds = ray.data.from_arrow(blocks)  # one block = whole inference batches, as in a local scan
    else:
        ds = ray.data.read_binary_files(
            read_paths,
            include_paths=True,
            ignore_missing_paths=True,
            # num_cpus=0: reading is I/O, and read tasks that hold a CPU deadlock against actors holding
            # every CPU; ``concurrency`` then bounds the worker processes Ray starts for them.
            num_cpus=0,
            concurrency=max(2, actors),
            override_num_blocks=math.ceil(len(read_paths) / per_block),  # one read task per Ray block
        )
    session = cfg.predictor.session
    threads = session.threads or max(1, round(cfg.cpus_per_actor))
    actor_cfg = replace(cfg.predictor, session=replace(session, threads=threads))
    return ds.map_batches(
        PredictorActor,
        fn_constructor_kwargs={
            "model": str(Path(cfg.model).resolve()),
            "cfg": actor_cfg,
            "model_id": model_id,
            "gpu": gpus > 0,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=per_block,
        num_cpus=cfg.cpus_per_actor,
        num_gpus=gpus,
    )


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _job_error(e: BaseException, written: int, cfg: RayScanConfig) -> RayJobError:
    """A Ray failure as one clear message: the innermost error (e.g. an actor's ModelError) and its hint."""
    cause = getattr(e, "cause", None)
    what, hint = f"{type(e).__name__}", None
    if isinstance(cause, CxrError):
        what, hint = cause.message, cause.hint
    else:
        lines = [_ANSI.sub("", ln).strip() for ln in str(e).splitlines() if ln.strip()]
        for j in range(len(lines) - 1, -1, -1):
            m = _ERROR_LINE.match(lines[j])
            if m and not m.group(1).startswith("ray."):
                what = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
                after = lines[j + 1] if j + 1 < len(lines) else ""
                hint = after.removeprefix("hint:").strip() if after.startswith("hint:") else None
                break
        else:
            what = (lines[-1] if lines else what)[:500]
    kept = f"; {written} rows were written to {cfg.output}" if cfg.output is not None and written else ""
    resume = " (rerun with --resume to finish the scan)" if kept else ""
    return RayJobError(
        f"the Ray job failed: {what}{kept}{resume}", hint=hint or "rerun with Ray's logs shown"
    )


def stream_rows(
    cfg: RayScanConfig,
    todo: list[str],
    mode: str,
    model_id: str,
    per_block: int,
    actors: int,
    gpus: float,
    rows: OrderedRows,
    default_provider: str,
) -> None:
    """Run the Ray pipeline and hand its rows, renamed as the local scan names them, to ``rows``."""
    from cxr.runtime.ray.cluster import import_ray

    ray = import_ray()
    read_paths = [n if is_url(n) else os.path.abspath(n) for n in todo]
    index = {_ray_key(p, mode): i for i, p in enumerate(read_paths)}
    ds = _build_dataset(ray, cfg, model_id, read_paths, mode, per_block, actors, gpus)
    with quiet_ray_data(not cfg.ray_logs):
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for key, text in zip(out["path"], out["prediction"], strict=True):
                    i = _lookup(index, str(key))
                    if not rows.has(i):
                        pred = prediction_from_json(str(text))
                        rows.add(i, _renamed(pred, todo[i], (read_paths[i], str(key), "<upload>")))
                rows.flush()
        except ray.exceptions.RayError as e:
            raise _job_error(e, rows.writer.rows, cfg) from e
    missing = [i for i in range(rows.next, len(todo)) if not rows.has(i)]
    if missing and mode == "path":
        raise RayJobError(f"Ray returned no row for {len(missing)} files (first: {todo[missing[0]]})")
    provider = rows.provider(default=default_provider).split(",")[0]
    for i in missing:  # bytes mode: files that vanished before Ray read them, as a local scan reports them
        error = f"{todo[i]}: no such file (hint: check the path)"
        rows.add(i, Prediction(todo[i], None, None, provider=provider, error=error))
    rows.flush()


def _lookup(index: dict[str, int], key: str) -> int:
    i = index.get(key, index.get(key.lstrip("/"), index.get("/" + key)))
    if i is None:
        raise RayJobError(f"Ray returned a row for {key!r}, which this scan did not ask for")
    return i
