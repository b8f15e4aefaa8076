"""A small progress display on stderr: bar, count, elapsed<ETA, images/s and live metrics.

On a terminal the line is redrawn in place (at most every ``min_interval`` seconds); elsewhere (CI logs,
files) a line is written every ``log_interval`` seconds and at the end. ``stream=None`` shows nothing.
"""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 20


def format_seconds(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


class Progress:
    def __init__(
        self,
        total: int,
        desc: str,
        stream: TextIO | None,
        *,
        min_interval: float = 0.2,
        log_interval: float = 15.0,
    ) -> None:
        self.total, self.desc, self.stream = max(0, total), desc, stream
        self.done = 0
        self.items = 0
        self.start = self.last = time.perf_counter()
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = min_interval if self.tty else log_interval
        self.postfix: dict[str, object] = {}

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        frac = self.done / self.total if self.total else 1.0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = int(frac * BAR_WIDTH)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * max(0, BAR_WIDTH - filled - 1)
        rate = f" {self.items / elapsed:.1f} img/s" if self.items and elapsed > 0 else ""
        extra = "".join(f" {k} {_fmt(v)}" for k, v in self.postfix.items())
        return (
            f"{self.desc} [{bar}] {self.done}/{self.total} "
            f"{format_seconds(elapsed)}<{format_seconds(eta)}{rate}{extra}"
        )

    def update(self, n: int = 1, items: int = 0, **postfix: object) -> None:
        self.done += n
        self.items += items
        self.postfix.update(postfix)
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= self.interval:
            self.last = now
            self._write(final=False)

    def close(self, **postfix: object) -> None:
        self.postfix.update(postfix)
        if self.stream is not None:
            self._write(final=True)

    def _write(self, final: bool) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
