"""Takes a total, a label, a stream and updates; makes a Rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

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


def _eta(elapsed: float, done: float, total: float) -> float:
    """Seconds left at the average pace so far (0 before the first step)."""
    return elapsed / done * max(0.0, total - done) if done else 0.0


def _rate(items: float, elapsed: float, unit: str) -> str:
    return f"{items / elapsed:.1f} {unit}/s" if items and elapsed > 0 else ""


class _TimeColumn(ProgressColumn):
    """``elapsed<remaining``, as in the plain lines."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        eta = _eta(elapsed, task.completed, task.total or 0)
        return Text(f"{format_seconds(elapsed)}<{format_seconds(eta)}", style="progress.remaining")


class _RateColumn(ProgressColumn):
    """Items (images) per second since the start; items need not be the steps the bar counts."""

    def render(self, task: Task) -> Text:
        return Text(
            _rate(task.fields["items"], task.elapsed or 0.0, task.fields["unit"]), style="progress.data.speed"
        )


class _ExtraColumn(ProgressColumn):
    """The live metrics (``loss 0.5036 acc 0.8438``), wrapped onto more lines on a narrow terminal."""

    def render(self, task: Task) -> Text:
        return Text(task.fields["extra"], overflow="fold")


def _rich_bar(console: Console, clock: Callable[[], float]) -> RichProgress:
    def fixed() -> Column:  # kept whole; only the metrics give way to the terminal's width
        return Column(no_wrap=True)

    return RichProgress(
        TextColumn("{task.description}", markup=False, table_column=fixed()),
        BarColumn(bar_width=BAR_WIDTH, table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()),
        _TimeColumn(table_column=fixed()),
        _RateColumn(table_column=fixed()),
        _ExtraColumn(),
        console=console,
        get_time=clock,
        auto_refresh=False,  # redrawn from update(): no thread, nothing left running if close() is missed
        redirect_stdout=False,  # results may go to stdout (cxr-predict scan): never capture it
        redirect_stderr=False,
    )


def _stop_quietly(bar: RichProgress) -> None:
    """End the live display: a last redraw, a newline and the cursor shown; a closed stream is let be."""
    with contextlib.suppress(OSError, ValueError):  # the stream went away first (interpreter exit)
        bar.stop()


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
        self.postfix: dict[str, object] = {}
        self._closed = False
        self._bar: RichProgress | None = None
        if stream is not None and getattr(stream, "isatty", lambda: False)():
            console = Console(file=stream, force_terminal=True, highlight=False)
            if not console.is_dumb_terminal:  # TERM=dumb: no cursor moves, so plain lines
                self._bar = _rich_bar(console, clock)
                self._task = self._bar.add_task(label, total=self.total, items=0, unit=unit, extra="")
                self._bar.start()
                self._stop = weakref.finalize(self, _stop_quietly, self._bar)  # cursor back if never closed
        self.tty = self._bar is not None
        self.interval = min_interval if self.tty else log_interval

    def line(self) -> str:
        """The plain line: ``label [bar] done/total elapsed<eta rate metrics``."""
        elapsed = self._clock() - self.start
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * BAR_WIDTH)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * max(0, BAR_WIDTH - filled - 1)
        rate = _rate(self.items, elapsed, self.unit)
        return (
            f"{self.label} [{bar}] {self.done}/{self.total} "
            f"{format_seconds(elapsed)}<{format_seconds(_eta(elapsed, self.done, self.total))}"
            f"{' ' + rate if rate else ''}{self._extra(' ')}"
        )

    def _extra(self, lead: str) -> str:
        return lead + " ".join(f"{k} {_fmt(v)}" for k, v in self.postfix.items()) if self.postfix else ""

    def update(self, n: int = 1, items: int | None = None, **postfix: object) -> None:
        self.done += n
        self.items += n if items is None else items
        self.postfix.update(postfix)
        if self._closed:
            return
        self._sync()
        now = self._clock()
        if self.stream is not None and now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._write(final=False)

    def close(self, **postfix: object) -> None:
        if self._closed:
            return
        self._closed = True
        self.postfix.update(postfix)
        self._sync()
        self._write(final=True)

    def _sync(self) -> None:
        """Hand the counts and metrics to the Rich bar (drawn by ``_write``)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, items=self.items, extra=self._extra(""))

    def _write(self, final: bool) -> None:
        if self.stream is None:
            return
        if self._bar is not None:
            if final:
                self._stop()  # the last redraw, a newline, the cursor back
            else:
                self._bar.refresh()
            return
        self.stream.write(self.line() + "\n")
        self.stream.flush()
