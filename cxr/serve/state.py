"""Takes a ``ServeConfig`` and a loader; makes ``ServerState``: the model loaded off the event loop, batcher,
gate."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.decode import DecodeLimits
from cxr.serve.batcher import DynamicBatcher
from cxr.serve.config import ServeConfig
from cxr.serve.errors import ApiError
from cxr.serve.limits import AdmissionGate
from cxr.serve.prometheus import ServeMetrics

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed", "stopped"]
Loader = Callable[[ServeConfig], "Predictor"]
ROUTES = ("/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics")


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
                self.heatmap_predictor = await asyncio.to_thread(load_predictor, self.cfg, True)
            self.warmup_seconds = await asyncio.to_thread(warm_up, predictor, self.cfg.max_batch_size)
        except CxrError as e:
            self._fail(e.message if not e.hint else f"{e.message} (hint: {e.hint})")
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

    async def wait_until_settled(self) -> Status:
        """Wait for the load to finish (tests and the CLI's startup log)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)
        return self.status

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            try:
                await self._load_task
            except asyncio.CancelledError:
                pass
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
