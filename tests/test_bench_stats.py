"""cxr-bench statistics against hand-computed values (linear-interpolation percentiles, sample std)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.bench.stats import LatencyStats, percentile, summarize
from cxr.errors import ConfigError

# sorted: 15, 20, 35, 40, 50; h = (n - 1) * q / 100 = 4q/100
HAND = [
    (0, 15.0),
    (25, 20.0),  # h = 1
    (50, 35.0),  # h = 2
    (75, 40.0),  # h = 3
    (90, 46.0),  # h = 3.6: 40 + 0.6 * 10
    (95, 48.0),  # h = 3.8: 40 + 0.8 * 10
    (99, 49.6),  # h = 3.96: 40 + 0.96 * 10
    (100, 50.0),
]


@pytest.mark.parametrize(("q", "expected"), HAND)
def test_percentile_matches_hand_computation(q: float, expected: float) -> None:
    assert percentile([40, 15, 50, 20, 35], q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7.0], 99, 7.0),  # one sample: every percentile is that sample
        ([1.0, 3.0], 90, 2.8),  # h = 0.9: 1 + 0.9 * 2
        ([1.0, 3.0], 50, 2.0),
        ([5.0, 5.0, 5.0], 95, 5.0),
        ([10, 20, 30, 40], 50, 25.0),  # h = 1.5
        ([10, 20, 30, 40], 90, 37.0),  # h = 2.7: 30 + 0.7 * 10
    ],
)
def test_percentile_small_samples(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 7, 100])
def test_percentile_is_numpy_linear(seed: int, n: int) -> None:
    values = np.random.default_rng(seed).exponential(3.0, n).tolist()
    for q in (50, 90, 95, 99):
        assert percentile(values, q) == pytest.approx(
            float(np.percentile(values, q, method="linear")), rel=1e-12
        )


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ConfigError):
        percentile(values, q)


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
