"""Takes request outcomes, batches and refusals; makes the ``/metrics`` body (one registry per app)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from cxr.serve.limits import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "MetricsMiddleware", "ServeMetrics"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServeMetrics:
    """All of the server's metrics; ``queue_depth``/``in_progress``/``ready`` are read at scrape time."""

    def __init__(
        self,
        routes: Iterable[str],
        queue_depth: Callable[[], float],
        in_progress: Callable[[], float],
        ready: Callable[[], float],
        max_batch_size: int,
    ) -> None:
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "cxr_http_requests_total",
            "HTTP requests by method, path and status.",
            ("method", "path", "status"),
            registry=reg,
        )
        self.latency = Histogram(
            "cxr_http_request_duration_seconds",
            "Time from request to response end.",
            ("path",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "cxr_batch_size",
            "Images per inference batch.",
            buckets=[2**i for i in range(8) if 2**i <= max_batch_size],
            registry=reg,
        )
        self.inference = Histogram(
            "cxr_inference_duration_seconds",
            "Time of one inference batch.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.rejected = Counter(
            "cxr_rejected_requests_total",
            "Requests refused by a limit, by reason.",
            ("reason",),
            registry=reg,
        )
        gauges = (
            ("cxr_queue_depth", "Requests waiting for a slot plus images waiting for a batch.", queue_depth),
            ("cxr_requests_in_progress", "Requests holding an admission slot.", in_progress),
            ("cxr_model_ready", "1 once the model is loaded and warmed up.", ready),
        )
        for name, help_text, read in gauges:
            Gauge(name, help_text, registry=reg).set_function(read)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """One finished HTTP exchange; ``method`` and ``path`` are bounded to known values here."""
        path = path if path in self.routes else "other"
        self.requests.labels(method if method in HTTP_METHODS else "other", path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> bytes:
        """This app's metrics in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: count every HTTP response by status and time it (outermost, so it sees 413s and 503s)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.observe_request(
                str(scope.get("method", "")), scope.get("path", ""), status, time.perf_counter() - start
            )
