"""Takes a ``ServeConfig`` and a loader; makes ``ServerState``: the model loaded off the event loop, the gate,
and the ``DynamicBatcher`` that coalesces concurrent requests into batches like Triton's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.decode import DecodeLimits
from cxr.serve.config import ServeConfig
from cxr.serve.errors import ApiError
from cxr.serve.limits import AdmissionGate
from cxr.serve.prometheus import ServeMetrics
from cxr.spec import Prediction

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed", "stopped"]
Loader = Callable[[ServeConfig], "Predictor"]
ROUTES = ("/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics")


InferFn = Callable[[Sequence[np.ndarray], Sequence[str]], list[Prediction]]
BatchObserver = Callable[[int, float], None]
"""Called on the event loop after every batch with (batch size, inference seconds)."""


class BatcherStopped(Exception):
    """The batcher is not running (server starting up or shutting down)."""


@dataclass
class _Item:
    gray: np.ndarray
    source: str
    future: asyncio.Future[BatchResult]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchResult:
    prediction: Prediction
    batch_size: int
    queue_seconds: float
    inference_seconds: float


class DynamicBatcher:
    """Start with ``start()`` inside a running event loop, ``submit`` images, ``stop()`` at shutdown."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        observer: BatchObserver | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.observer = observer
        self.in_flight = in_flight
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Images queued for a batch that has not started yet."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cxr-infer")
        self._task = asyncio.get_running_loop().create_task(
            self._loop(self._queue, self._pool), name="cxr-batcher"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue is not None:
            queued = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            _fail(queued, BatcherStopped("the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def submit(self, gray: np.ndarray, source: str) -> BatchResult:
        """Queue one image and wait for its result (cancel-safe: a cancelled wait drops the image)."""
        if not self.running or self._queue is None:
            raise BatcherStopped("the model is not serving yet")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(gray, source, fut))
        return await fut

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            if self.in_flight is not None and len(batch) >= self.in_flight():
                break  # every admitted request is already in this batch: waiting cannot fill it
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [it for it in batch if not it.future.done()]

    async def _loop(self, queue: asyncio.Queue[_Item], pool: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            started = time.perf_counter()
            grays = [it.gray for it in batch]
            sources = [it.source for it in batch]
            try:
                preds = await loop.run_in_executor(pool, self.infer, grays, sources)
            except asyncio.CancelledError:
                _fail(batch, BatcherStopped("the server is shutting down"))
                raise
            except Exception as e:  # every waiting request gets the error; the loop lives on
                log.exception("inference failed for a batch of %d", len(batch))
                _fail(batch, e)
                continue
            seconds = time.perf_counter() - started
            if self.observer is not None:
                self.observer(len(batch), seconds)
            for it, pred in zip(batch, preds, strict=True):
                if not it.future.done():
                    it.future.set_result(BatchResult(pred, len(batch), started - it.queued_at, seconds))


def _fail(items: Sequence[_Item], error: BaseException) -> None:
    """``error`` for every item whose request still waits."""
    for it in items:
        if not it.future.done():
            it.future.set_exception(error)


def load_predictor(cfg: ServeConfig, heatmaps: bool = False) -> Predictor:
    """The default loader: ``Predictor.from_path`` with the server's session and limits; ``heatmaps``: the
    heatmap graph beside ``cfg.model`` (``<stem>.heatmaps.onnx``), one image at a time on the CPU."""
    from cxr.runtime.locate import heatmap_variant
    from cxr.runtime.predictor import Predictor, PredictorConfig
    from cxr.session import SessionConfig

    limits = DecodeLimits(max_bytes=cfg.max_body_bytes, max_pixels=cfg.max_pixels)
    if not heatmaps:
        pcfg = PredictorConfig(
            session=cfg.session,
            limits=limits,
            batch_size=cfg.max_batch_size,
            decode_workers=cfg.decode_workers,
        )
        return Predictor.from_path(cfg.model, pcfg)
    session = SessionConfig(provider="cpu", threads=cfg.session.threads)
    heat = Predictor.from_path(
        heatmap_variant(cfg.model), PredictorConfig(session=session, limits=limits, batch_size=1)
    )
    if not heat.has_heatmaps:
        raise CxrError(
            f"{heat.model_path} has no heatmap output", hint="rebuild it with `cxr fuse --heatmaps`"
        )
    return heat


def warm_up(predictor: Predictor, max_batch_size: int) -> float:
    """Run the batch sizes the batcher will use first, so the first real request is not the slow one."""
    h, w = predictor.metadata.preprocess.input_size
    gray = np.full((h, w), 128, dtype=np.uint8)
    t0 = time.perf_counter()
    for n in sorted({1, max_batch_size}):
        preds = predictor.predict_arrays([gray] * n, [f"warm-up[{i}]" for i in range(n)])
        if len(preds) != n:
            raise CxrError(f"warm-up returned {len(preds)} predictions for {n} images")
    return time.perf_counter() - t0


class ServerState:
    def __init__(self, cfg: ServeConfig, loader: Loader | None = None) -> None:
        self.cfg = cfg
        self.loader = loader or load_predictor
        self.status: Status = "loading"
        self.error: str | None = None
        self.predictor: Predictor | None = None
        self.heatmap_predictor: Predictor | None = None  # cfg.heatmaps: <stem>.heatmaps.onnx
        self.warmup_seconds: float | None = None
        self.limits = DecodeLimits(max_bytes=cfg.max_body_bytes, max_pixels=cfg.max_pixels)
        self.gate = AdmissionGate(cfg.max_concurrency, cfg.max_queue)
        self.metrics = ServeMetrics(
            ROUTES,
            queue_depth=lambda: self.gate.waiting + (self.batcher.pending if self.batcher else 0),
            in_progress=lambda: self.gate.active,
            ready=lambda: 1.0 if self.status == "ready" else 0.0,
            max_batch_size=cfg.max_batch_size,
        )
        self.batcher: DynamicBatcher | None = None
        self.decode_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._load_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin loading; safe to call again after ``stop()`` (a restarted lifespan starts afresh)."""
        self.status, self.error, self.predictor, self.batcher = "loading", None, None, None
        self.warmup_seconds = None
        self.gate = AdmissionGate(self.cfg.max_concurrency, self.cfg.max_queue)
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(
            self.cfg.decode_workers, thread_name_prefix="cxr-decode"
        )
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="cxr-load-model")

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            predictor = await asyncio.to_thread(self.loader, self.cfg)
            if self.cfg.heatmaps:
                self.heatmap_predictor = await asyncio.to_thread(load_predictor, self.cfg, heatmaps=True)
            self.warmup_seconds = await asyncio.to_thread(warm_up, predictor, self.cfg.max_batch_size)
        except CxrError as e:
            self._fail(e.one_line)
            return
        except Exception as e:  # any loader failure must surface in /readyz, not kill the process silently
            log.exception("loading the model failed")
            self._fail(f"the model could not be loaded ({type(e).__name__})")
            return
        self.predictor = predictor
        self.batcher = DynamicBatcher(
            predictor.predict_arrays,
            max_batch_size=self.cfg.max_batch_size,
            max_wait_ms=self.cfg.max_wait_ms,
            observer=self.metrics.observe_batch,
            in_flight=lambda: self.gate.active,
        )
        self.batcher.start()
        self.status = "ready"
        for warning in predictor.info.warnings:
            log.warning("%s", warning)
        log.info(
            "model %s (id %s) ready on %s in %.2f s (warm-up %.2f s); dynamic batching: max %d, wait %.1f ms",
            self.cfg.model.name,
            predictor.model_id,
            predictor.info.label,
            time.perf_counter() - t0,
            self.warmup_seconds,
            self.cfg.max_batch_size,
            self.cfg.max_wait_ms,
        )

    def _fail(self, message: str) -> None:
        model = self.cfg.model
        for shown in {str(model.resolve()), str(model)}:  # /readyz is public: no server-side folders
            message = message.replace(shown, model.name)
        self.status = "failed"
        self.error = message
        log.error("model not served: %s", message)

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.status = "stopped"

    def require_ready(self) -> tuple[Predictor, DynamicBatcher, concurrent.futures.ThreadPoolExecutor]:
        """The serving parts, or 503 ``not_ready`` (with Retry-After) while loading or after a failure."""
        if self.status == "ready" and self.predictor and self.batcher and self.decode_pool:
            return self.predictor, self.batcher, self.decode_pool
        message = {
            "loading": "the model is still loading; poll /readyz",
            "failed": "the model failed to load; see /readyz",
            "stopped": "the server is shutting down",
        }.get(self.status, "the model is not ready")
        self.metrics.rejected.labels(reason="not_ready").inc()
        retry = str(self.cfg.retry_after_s)
        raise ApiError(503, "not_ready", message, headers={"Retry-After": retry})
