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
