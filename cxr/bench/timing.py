"""The timing loops of cxr-bench: warm-up, then a fixed number of calls and/or a minimum time.

Takes: zero-argument callables (one inference call each; a call may return a mapping of stage seconds)
and a ``TimingPlan``. Makes: ``Timed`` (wall seconds of every timed call, the measured window, the first
warm-up call, summed stage seconds).

- ``time_calls``: one client in the calling thread.
- ``time_concurrent``: N client threads, like Triton's perf_analyzer. Every client warms up, then all
  start together at a barrier. Calls are handed out from one counter until at least ``clients *
  iterations`` calls were made and ``min_seconds`` have passed, so the concurrency stays N until the end
  (each client overshoots by at most one call). Throughput = images of all calls / the window from the
  barrier to the last completion.
Clocks: ``time.perf_counter``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cxr.errors import ConfigError

Call = Callable[[], Mapping[str, float] | None]


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 3
    iterations: int = 20  # at least this many timed calls (per client)
    min_seconds: float = 0.0  # and at least this long

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"warm-up runs must be >= 0, got {self.warmup}", hint="e.g. --warmup 3")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}", hint="e.g. --iterations 20")
        if self.min_seconds < 0:
            raise ConfigError(
                f"minimum seconds must be >= 0, got {self.min_seconds}", hint="e.g. --min-seconds 10"
            )


@dataclass(frozen=True)
class Timed:
    call_seconds: tuple[float, ...]
    wall_seconds: float
    first_call_seconds: float | None
    stage_seconds: Mapping[str, float] = field(default_factory=dict)  # summed over timed calls

    @property
    def calls(self) -> int:
        return len(self.call_seconds)


def _add(acc: dict[str, float], stages: Mapping[str, float] | None) -> None:
    if stages:
        for k, v in stages.items():
            acc[k] = acc.get(k, 0.0) + float(v)


def time_calls(call: Call, plan: TimingPlan) -> Timed:
    """Warm up, then time ``call`` until ``plan.iterations`` calls and ``plan.min_seconds`` are done."""
    first: float | None = None
    for _ in range(plan.warmup):
        t0 = time.perf_counter()
        call()
        if first is None:
            first = time.perf_counter() - t0
    samples: list[float] = []
    stages: dict[str, float] = {}
    start = time.perf_counter()
    now = start
    while len(samples) < plan.iterations or now - start < plan.min_seconds:
        t0 = time.perf_counter()
        _add(stages, call())
        now = time.perf_counter()
        samples.append(now - t0)
    return Timed(tuple(samples), now - start, first, stages)


def time_concurrent(calls: Sequence[Call], plan: TimingPlan) -> Timed:
    """``len(calls)`` client threads, client i repeatedly making ``calls[i]`` (see the module doc)."""
    clients = len(calls)
    if clients < 1:
        raise ConfigError("concurrency must be >= 1")
    if clients == 1:
        return time_calls(calls[0], plan)
    target = clients * plan.iterations
    lock = threading.Lock()
    issued = 0
    start = 0.0
    samples: list[float] = []
    ends: list[float] = []
    firsts: list[float] = []
    errors: list[BaseException] = []

    def _begin() -> None:
        nonlocal start
        start = time.perf_counter()

    barrier = threading.Barrier(clients, action=_begin)

    def _client(call: Call) -> None:
        nonlocal issued
        try:
            for i in range(plan.warmup):
                t0 = time.perf_counter()
                call()
                if i == 0:
                    with lock:
                        firsts.append(time.perf_counter() - t0)
        except BaseException as e:  # re-raised in the caller's thread below
            with lock:
                errors.append(e)
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while True:
                with lock:
                    if errors or (issued >= target and time.perf_counter() - start >= plan.min_seconds):
                        return
                    issued += 1
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                with lock:
                    samples.append(t1 - t0)
                    ends.append(t1)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=_client, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return Timed(tuple(samples), max(ends) - start, max(firsts) if firsts else None, {})
