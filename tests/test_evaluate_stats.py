"""McNemar's test, bootstrap intervals and voting against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.evaluate.methods import majority_vote, soft_vote
from cxr.evaluate.stats import binomial_two_sided, bootstrap_intervals, mcnemar


def _pairs(a_only: int, b_only: int, both: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * a_only + [False] * b_only + [True] * both)
    b = np.array([False] * a_only + [True] * b_only + [True] * both)
    return a, b


def test_exact_mcnemar_by_hand() -> None:
    # 10 vs 2 discordant: P(X <= 2 | n = 12, 1/2) = (1 + 12 + 66) / 4096, two-sided = 158 / 4096
    r = mcnemar(*_pairs(10, 2), a="stack", b="best")
    assert (r.a_only, r.b_only, r.discordant) == (10, 2, 12)
    assert r.method == "exact binomial" and r.statistic is None
    assert r.p_value == pytest.approx(158 / 4096)


def test_chi_square_mcnemar_by_hand() -> None:
    # 30 vs 10 discordant (>= 25): chi2 = (|30 - 10| - 1)^2 / 40 = 9.025; p = erfc(sqrt(9.025 / 2))
    r = mcnemar(*_pairs(30, 10))
    assert r.method.startswith("chi-square")
    assert r.statistic == pytest.approx(9.025)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert r.p_value == pytest.approx(0.002663, abs=1e-5)


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 0, 1.0), (3, 6, 1.0), (0, 5, 2 / 32), (5, 5, 2 / 32), (1, 4, 10 / 16)]
)
def test_binomial_two_sided(k: int, n: int, p: float) -> None:
    assert binomial_two_sided(k, n) == pytest.approx(p)


def test_no_discordant_pairs_gives_p_one() -> None:
    a = np.array([True, False, True])
    assert mcnemar(a, a).p_value == 1.0


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng_data = np.random.default_rng(0)
    y = rng_data.integers(0, 3, size=80)
    pred = np.where(rng_data.random(80) < 0.7, y, (y + 1) % 3)
    preds = {"m": pred, "perfect": y.copy()}
    a = bootstrap_intervals(y, preds, 3, n_boot=300, rng=np.random.default_rng(1))
    b = bootstrap_intervals(y, preds, 3, n_boot=300, rng=np.random.default_rng(1))
    assert a["m"]["accuracy"] == b["m"]["accuracy"]
    acc = float(np.mean(pred == y))
    lo, hi = a["m"]["accuracy"].low, a["m"]["accuracy"].high
    assert lo is not None and hi is not None and lo < acc < hi and hi - lo < 0.3
    assert a["perfect"]["accuracy"].to_list() == [1.0, 1.0]
    assert a["perfect"]["macro_f1"].to_list() == [1.0, 1.0]


def test_soft_and_majority_voting_by_hand() -> None:
    # 3 members, 3 classes, 2 images.
    p = np.array(
        [
            [[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.2, 0.2, 0.6]],  # votes 0, 1, 2: a three-way tie
            [[0.1, 0.8, 0.1], [0.4, 0.5, 0.1], [0.9, 0.05, 0.05]],  # votes 1, 1, 0 -> 1
        ]
    )
    np.testing.assert_allclose(soft_vote(p)[0], [0.3, 1 / 3, 1.1 / 3])
    labels, shares = majority_vote(p)
    # image 0: class 2 has the highest mean probability (1.1 / 3) among the tied classes
    np.testing.assert_array_equal(labels, [2, 1])
    np.testing.assert_allclose(shares, [[1 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 0]])
