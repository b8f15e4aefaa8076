"""cxr-bench statistics against hand-computed values (numpy's linear percentiles, sample std, outliers)."""

from __future__ import annotations

import math

import pytest

from cxr.bench.types import LatencyStats, summarize
from cxr.errors import ConfigError

# sorted: 15, 20, 35, 40, 50 ms; h = (n - 1) * q / 100 = 4q/100, p = x[floor h] + frac(h) * next gap
HAND = {"p50": 35.0, "p90": 46.0, "p95": 48.0, "p99": 49.6}  # h = 2, 3.6, 3.8, 3.96


def test_percentiles_match_hand_computation() -> None:
    s = summarize([v / 1000 for v in (40, 15, 50, 20, 35)])
    assert {k: getattr(s, k) for k in HAND} == pytest.approx(HAND, abs=1e-9)
    assert (s.min, s.max) == pytest.approx((15.0, 50.0))


@pytest.mark.parametrize(
    ("values", "p50", "p90"),
    [
        ([7.0], 7.0, 7.0),  # one sample: every percentile is that sample
        ([1.0, 3.0], 2.0, 2.8),  # h = 0.9: 1 + 0.9 * 2
        ([5.0, 5.0, 5.0], 5.0, 5.0),
        ([10, 20, 30, 40], 25.0, 37.0),  # h = 1.5; h = 2.7: 30 + 0.7 * 10
    ],
)
def test_percentiles_of_small_samples(values: list[float], p50: float, p90: float) -> None:
    s = summarize([v / 1000 for v in values])
    assert (s.p50, s.p90) == pytest.approx((p50, p90), abs=1e-9)


def test_summarize_reports_outliers_without_hiding_them() -> None:
    s = summarize([0.010, 0.012, 0.011, 0.013, 0.100])  # seconds -> 10, 12, 11, 13, 100 ms
    assert s.count == 5
    assert s.mean == pytest.approx(29.2)
    # sample std: squared deviations 368.64 + 295.84 + 331.24 + 262.44 + 5012.64 = 6270.8, / (n - 1)
    assert s.std == pytest.approx(math.sqrt(6270.8 / 4))
    assert (s.min, s.p50, s.max) == pytest.approx((10.0, 12.0, 100.0))
    assert s.p90 == pytest.approx(13 + 0.6 * 87)
    assert s.p99 == pytest.approx(13 + 0.96 * 87)
    # Q1 = 11, Q3 = 13: fence 13 + 1.5 * 2 = 16; only the 100 ms call is above it
    assert s.outlier_fence == pytest.approx(16.0)
    assert s.outliers == 1


def test_single_sample_has_zero_std() -> None:
    s = summarize([0.004])
    assert (s.count, s.std, s.p99, s.outliers) == (1, 0.0, pytest.approx(4.0), 0)


def test_scaled_divides_every_time_but_not_counts() -> None:
    s = summarize([0.008, 0.016, 0.012])
    per = s.scaled(1 / 8)
    assert per.p50 == pytest.approx(s.p50 / 8) and per.max == pytest.approx(2.0)
    assert per.std == pytest.approx(s.std / 8) and per.outlier_fence == pytest.approx(s.outlier_fence / 8)
    assert (per.count, per.outliers) == (s.count, s.outliers)


def test_stats_round_trip() -> None:
    s = summarize([0.001, 0.002, 0.0035])
    assert LatencyStats.from_dict(s.to_dict()) == s


def test_summarize_needs_samples() -> None:
    with pytest.raises(ConfigError):
        summarize([])
