"""Takes zero-argument calls and a ``TimingPlan``; makes ``Timed`` (one client, or N threads like
perf_analyzer)."""

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


class _Clients:
    """What the client threads of one ``time_concurrent`` run share; every field is guarded by ``lock``."""

    def __init__(self, clients: int, plan: TimingPlan) -> None:
        self.plan = plan
        self.target = clients * plan.iterations
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(clients, action=self._begin)
        self.issued = 0
        self.start = 0.0
        self.samples: list[float] = []
        self.ends: list[float] = []
        self.firsts: list[float] = []
        self.errors: list[BaseException] = []

    def _begin(self) -> None:
        self.start = time.perf_counter()

    def _fail(self, e: BaseException) -> None:
        with self.lock:
            self.errors.append(e)

    def _next(self) -> bool:
        """Hand out one more call, unless a client failed or the plan is done."""
        with self.lock:
            if self.errors or (
                self.issued >= self.target and time.perf_counter() - self.start >= self.plan.min_seconds
            ):
                return False
            self.issued += 1
            return True

    def _warm_up(self, call: Call) -> None:
        for i in range(self.plan.warmup):
            t0 = time.perf_counter()
            call()
            if i == 0:
                with self.lock:
                    self.firsts.append(time.perf_counter() - t0)

    def run(self, call: Call) -> None:
        """One client: warm up, wait for the others at the barrier, then call until the plan is done."""
        try:
            self._warm_up(call)
        except BaseException as e:  # re-raised in the caller's thread by ``time_concurrent``
            self._fail(e)
            self.barrier.abort()
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while self._next():
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                with self.lock:
                    self.samples.append(t1 - t0)
                    self.ends.append(t1)
        except BaseException as e:
            self._fail(e)


def time_concurrent(calls: Sequence[Call], plan: TimingPlan) -> Timed:
    """``len(calls)`` client threads, client i repeatedly making ``calls[i]``, started together at a barrier."""
    clients = len(calls)
    if clients < 1:
        raise ConfigError("concurrency must be >= 1")
    if clients == 1:
        return time_calls(calls[0], plan)
    shared = _Clients(clients, plan)
    threads = [threading.Thread(target=shared.run, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if shared.errors:
        raise shared.errors[0]
    firsts = shared.firsts
    return Timed(tuple(shared.samples), max(shared.ends) - shared.start, max(firsts) if firsts else None, {})
