"""The one progress display (training epochs, scans): bar, count, elapsed<ETA, rate and live metrics.

Takes: a total, a label, a text stream (``None`` shows nothing) and updates. Makes: on a terminal, one line
redrawn in place at most every ``min_interval`` seconds; elsewhere (CI logs, files) a plain line at most
every ``log_interval`` seconds, and a final line at ``close``. Dependency-free, so the runtime can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 20


def format_seconds(s: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


class Progress:
    """``update(n, items=..., **metrics)`` after each step; ``close(**metrics)`` at the end.

    ``n`` counts steps toward ``total`` (batches in training, images in a scan); ``items`` counts the
    ``unit`` for the rate (images), and defaults to ``n``.
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None,
        *,
        unit: str = "img",
        min_interval: float = 0.2,
        log_interval: float = 15.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total, self.label, self.stream, self.unit = max(0, total), label, stream, unit
        self.done = 0
        self.items = 0
        self._clock = clock
        self.start = clock()
        self._last = -float("inf")
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = min_interval if self.tty else log_interval
        self.postfix: dict[str, object] = {}
        self._closed = False

    def line(self) -> str:
        elapsed = self._clock() - self.start
        frac = self.done / self.total if self.total else 1.0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = int(frac * BAR_WIDTH)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * max(0, BAR_WIDTH - filled - 1)
        rate = f" {self.items / elapsed:.1f} {self.unit}/s" if self.items and elapsed > 0 else ""
        extra = "".join(f" {k} {_fmt(v)}" for k, v in self.postfix.items())
        return (
            f"{self.label} [{bar}] {self.done}/{self.total} "
            f"{format_seconds(elapsed)}<{format_seconds(eta)}{rate}{extra}"
        )

    def update(self, n: int = 1, items: int | None = None, **postfix: object) -> None:
        self.done += n
        self.items += n if items is None else items
        self.postfix.update(postfix)
        now = self._clock()
        if self.stream is not None and now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._write(final=False)

    def close(self, **postfix: object) -> None:
        if self._closed:
            return
        self._closed = True
        self.postfix.update(postfix)
        self._write(final=True)

    def _write(self, final: bool) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
