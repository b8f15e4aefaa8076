"""cxr-bench timing loops: warm-up, iteration count, minimum time, N concurrent clients."""

from __future__ import annotations

import threading
import time

import pytest

from cxr.bench.config import TimingPlan
from cxr.bench.measure import time_calls, time_concurrent
from cxr.errors import ConfigError


class Counter:
    def __init__(self, sleep: float = 0.0) -> None:
        self.n = 0
        self.sleep = sleep
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self) -> dict[str, float]:
        with self.lock:
            self.n += 1
            self.threads.add(threading.get_ident())
        if self.sleep:
            time.sleep(self.sleep)
        return {"stage": 0.5}


@pytest.mark.parametrize(("warmup", "iterations"), [(0, 1), (2, 5), (3, 12)])
def test_time_calls_counts(warmup: int, iterations: int) -> None:
    call = Counter()
    t = time_calls(call, TimingPlan(warmup, iterations))
    assert call.n == warmup + iterations
    assert t.calls == iterations
    assert (t.first_call_seconds is None) == (warmup == 0)
    assert t.stage_seconds == {"stage": pytest.approx(0.5 * iterations)}
    assert t.wall_seconds >= sum(t.call_seconds) * 0.99


def test_min_seconds_extends_the_run() -> None:
    t = time_calls(Counter(0.005), TimingPlan(0, 2, min_seconds=0.06))
    assert t.wall_seconds >= 0.06
    assert t.calls >= 6  # 0.06 s of 5 ms calls, far more than the 2 iterations asked


@pytest.mark.parametrize("clients", [2, 4])
def test_concurrent_clients_run_in_parallel_and_make_exactly_the_target(clients: int) -> None:
    call = Counter(0.02)
    t = time_concurrent([call] * clients, TimingPlan(warmup=1, iterations=3))
    assert t.calls == clients * 3
    assert call.n == clients * 3 + clients  # plus one warm-up call per client
    assert len(call.threads) == clients
    # serial would take clients * 3 * 20 ms; in parallel about 3 * 20 ms
    assert t.wall_seconds < clients * 3 * 0.02 * 0.75
    assert t.first_call_seconds is not None


def test_concurrent_error_is_raised_in_caller() -> None:
    def boom() -> None:
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        time_concurrent([boom, boom], TimingPlan(warmup=1, iterations=2))
    with pytest.raises(RuntimeError, match="bad batch"):
        time_concurrent([boom, boom], TimingPlan(warmup=0, iterations=2))


@pytest.mark.parametrize(("warmup", "iterations", "min_s"), [(-1, 1, 0.0), (0, 0, 0.0), (0, 1, -1.0)])
def test_plan_rejects_bad_values(warmup: int, iterations: int, min_s: float) -> None:
    with pytest.raises(ConfigError):
        TimingPlan(warmup, iterations, min_s)
