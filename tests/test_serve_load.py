"""A bounded load test against a real server (benchmarks/bench_serve.py, small counts): no failed request
except deliberate 503s under overload, no memory growth across the run, still ready afterwards."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py"
RSS_GROWTH_MIB = 40.0


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serve", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_load_with_dynamic_batching(fused_model: Path, tmp_path: Path) -> None:
    bench = _bench()
    args = ("--threads=1", "--max-concurrency=32", "--max-queue=64", "--max-batch-size=8", "--max-wait-ms=5")
    row = bench.run_scenario(fused_model, bench.Scenario("batching", args, 600, 16), tmp_path, warmup=100)
    assert row.requests == 600 and row.statuses == {"200": 600} and row.failures == 0, row
    assert row.ready_after and row.mean_batch_size >= 1.0
    assert row.rss_end_mib - row.rss_start_mib < RSS_GROWTH_MIB, row
    assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms


@pytest.mark.slow
def test_overload_answers_503_with_retry_after_and_nothing_else(fused_model: Path, tmp_path: Path) -> None:
    bench = _bench()
    args = ("--threads=1", "--max-concurrency=2", "--max-queue=2", "--max-batch-size=4")
    scenario = bench.Scenario("overload", args, 400, 48, allowed=frozenset({200, 503}))
    row = bench.run_scenario(fused_model, scenario, tmp_path, warmup=50)
    assert row.failures == 0 and row.requests == 400, row
    assert row.statuses.get("503", 0) > 0 and row.statuses.get("200", 0) > 0, row
    assert row.retry_after_on_503 and row.ready_after
    assert row.rss_end_mib - row.rss_start_mib < RSS_GROWTH_MIB, row
