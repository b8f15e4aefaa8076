"""Class weights w_k = N / (K * n_k)."""

from __future__ import annotations

import pytest

from cxr.data.weights import class_weights
from cxr.errors import DataError
from cxr.labels import CLASSES, REAL_COUNTS


def test_weights_match_the_formula_on_the_real_counts() -> None:
    w = class_weights(REAL_COUNTS, CLASSES)
    n = 21165
    assert w == pytest.approx([n / (4 * 3616), n / (4 * 6012), n / (4 * 10192), n / (4 * 1345)])
    # the weighted class totals are equal: every class contributes N / K to the loss
    assert [w[i] * REAL_COUNTS[c] for i, c in enumerate(CLASSES)] == pytest.approx([n / 4] * 4)


def test_balanced_counts_give_unit_weights() -> None:
    assert class_weights(dict.fromkeys(CLASSES, 7), CLASSES) == pytest.approx([1.0] * 4)


def test_missing_class_is_named() -> None:
    with pytest.raises(DataError, match="'Lung_Opacity'"):
        class_weights({"COVID": 3, "Normal": 3, "Viral Pneumonia": 1}, CLASSES)


@pytest.mark.parametrize(("cap", "expected_rare"), [(None, 90.25), (10.0, 10.0), (100.0, 90.25)])
def test_a_cap_bounds_the_weight_of_a_near_empty_class(cap: float | None, expected_rare: float) -> None:
    counts = {"COVID": 120, "Lung_Opacity": 1, "Normal": 120, "Viral Pneumonia": 120}  # the real sample
    w = class_weights(counts, CLASSES, cap)
    assert w[CLASSES.index("Lung_Opacity")] == pytest.approx(expected_rare)
    assert w[CLASSES.index("COVID")] == pytest.approx(361 / 480)
