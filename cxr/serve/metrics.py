"""Prometheus metrics in the text exposition format, without a client library (fastapi-free).

Takes: request outcomes (from ``MetricsMiddleware``), batch sizes and inference times (from the batcher),
queue depth (read when scraped). Makes: the ``/metrics`` body (text format 0.0.4):
``cxr_http_requests_total{method,path,status}``, ``cxr_http_request_duration_seconds{path}`` (histogram),
``cxr_queue_depth``, ``cxr_requests_in_progress``, ``cxr_batch_size`` (histogram),
``cxr_inference_duration_seconds`` (histogram), ``cxr_rejected_requests_total{reason}``, ``cxr_model_ready``.
Paths outside the API's own routes are counted as ``other`` so a scanner cannot blow up the label set.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from cxr.serve.limits import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
Labels = tuple[tuple[str, str], ...]
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield f"{self.name}{_labels(key)} {_num(v)}"


class Gauge:
    """A value read when scraped (``read``)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_num(self.read())}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(sorted(buckets))
        self._data: dict[Labels, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        idx = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[idx] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._data.get(tuple(sorted(labels.items())))
            return sum(entry[0]) if entry else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            running = 0
            for le, c in zip((*self.buckets, math.inf), counts, strict=True):
                running += c
                yield f"{self.name}_bucket{_labels(key, ('le', _num(le)))} {running}"
            yield f"{self.name}_sum{_labels(key)} {_num(total)}"
            yield f"{self.name}_count{_labels(key)} {running}"


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
        self.requests = Counter("cxr_http_requests_total", "HTTP requests by method, path and status.")
        self.latency = Histogram(
            "cxr_http_request_duration_seconds", "Time from request to response end.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "cxr_batch_size",
            "Images per inference batch.",
            [2**i for i in range(8) if 2**i <= max_batch_size],
        )
        self.inference = Histogram(
            "cxr_inference_duration_seconds", "Time of one inference batch.", LATENCY_BUCKETS
        )
        self.rejected = Counter("cxr_rejected_requests_total", "Requests refused by a limit, by reason.")
        self._gauges = [
            Gauge(
                "cxr_queue_depth", "Requests waiting for a slot plus images waiting for a batch.", queue_depth
            ),
            Gauge("cxr_requests_in_progress", "Requests holding an admission slot.", in_progress),
            Gauge("cxr_model_ready", "1 once the model is loaded and warmed up.", ready),
        ]

    def route_label(self, path: str) -> str:
        return path if path in self.routes else "other"

    @staticmethod
    def method_label(method: str) -> str:
        return method if method in HTTP_METHODS else "other"

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.batch_size, self.inference, self.rejected):
            lines.extend(metric.render())
        for gauge in self._gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"


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
            path = self.metrics.route_label(scope.get("path", ""))
            method = self.metrics.method_label(str(scope.get("method", "")))
            self.metrics.requests.inc(method=method, path=path, status=str(status))
            self.metrics.latency.observe(time.perf_counter() - start, path=path)
