"""Takes images from concurrent requests and a batch ``infer``; makes each its ``Prediction`` (Triton-style
batching)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr.spec import Prediction

log = logging.getLogger(__name__)

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
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(BatcherStopped("the server is shutting down"))
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
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(BatcherStopped("the server is shutting down"))
                raise
            except Exception as e:  # every waiting request gets the error; the loop lives on
                log.exception("inference failed for a batch of %d", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            seconds = time.perf_counter() - started
            if self.observer is not None:
                self.observer(len(batch), seconds)
            for it, pred in zip(batch, preds, strict=True):
                if not it.future.done():
                    it.future.set_result(BatchResult(pred, len(batch), started - it.queued_at, seconds))
