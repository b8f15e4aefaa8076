"""Takes predictions out of order; writes them in scan order as soon as a prefix is complete, and counts
them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cxr.runtime.results import ResultWriter
from cxr.runtime.scan import ScanTally
from cxr.spec import Prediction


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


__all__ = ["OrderedRows"]
