"""A dependency-free progress bar with rate and ETA, drawn on a text stream (stderr in the CLI).

Takes: a total, a stream, and updates. Makes: on a terminal, one line redrawn at most every
``min_interval`` seconds; elsewhere (logs, CI), a plain line at most every ``log_interval`` seconds and a
final line at ``close``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class ProgressBar:
    """``update(n)`` after each batch; ``close()`` at the end."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        label: str = "scan",
        unit: str = "img",
        enabled: bool = True,
        min_interval: float = 0.2,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.done = 0
        self._clock = clock
        self._t0 = clock()
        self._last = -float("inf")
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._interval = min_interval if self._tty else log_interval
        self._closed = False

    def line(self, width: int = 24) -> str:
        elapsed = self._clock() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * width))
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.label} {frac:4.0%} |{'#' * filled}{'.' * (width - filled)}| {self.done}/{self.total} "
            f"{rate:.1f} {self.unit}/s elapsed {format_duration(elapsed)} ETA {format_duration(eta)}"
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = self._clock()
        if now - self._last < self._interval and self.done < self.total:
            return
        self._last = now
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
        elif self.done < self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._closed or not self.enabled:
            return
        self._closed = True
        self.stream.write(("\r" + self.line() + "\x1b[K\n") if self._tty else self.line() + "\n")
        self.stream.flush()
