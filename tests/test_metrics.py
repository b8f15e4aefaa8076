"""Evaluation metrics against values computed by hand on a small fixed example."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.calibration import bin_index, expected_calibration_error, reliability_bins
from cxr.metrics import classification_metrics, confusion_matrix, metrics_record, roc_auc_binary

FOUR = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
CLASSES = ("A", "B", "C", "D")  # D never appears in the truth: its recall/F1/AUC are undefined

# 8 images. True:      A A A B B C C C
#           Predicted: A A B B D C C A
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 3, 2, 2, 0])
CONF = np.array([0.9, 0.8, 0.6, 0.7, 0.5, 0.95, 0.85, 0.4])


def _probs() -> np.ndarray:
    """Probabilities whose argmax is Y_PRED with confidence CONF (rest spread evenly)."""
    p = np.zeros((8, 4))
    for i, (c, conf) in enumerate(zip(Y_PRED, CONF, strict=True)):
        p[i] = (1 - conf) / 3
        p[i, c] = conf
    return p


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    expected = np.array([[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)


def test_per_class_and_averages_by_hand() -> None:
    m = classification_metrics(Y_TRUE, _probs(), CLASSES)
    assert m.accuracy == pytest.approx(5 / 8)
    a, b, c, d = m.per_class
    # A: TP 2, FP 1 (the C predicted A), FN 1 -> P 2/3, R 2/3, F1 2/3
    assert (a.precision, a.recall, a.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # B: TP 1, FP 1, FN 1 -> 1/2 each
    assert (b.precision, b.recall, b.f1) == pytest.approx((0.5, 0.5, 0.5))
    # C: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 = 4/5
    assert (c.precision, c.recall, c.f1) == pytest.approx((1.0, 2 / 3, 0.8))
    # D: no support; predicted once (wrongly) -> precision 0, the rest undefined
    assert d.support == 0 and d.predicted == 1
    assert d.precision == 0.0 and d.recall is None and d.f1 is None and d.roc_auc is None
    assert m.undefined_classes == ("D",)
    # macro over the classes with support (A, B, C)
    assert m.macro_precision == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert m.macro_recall == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    # weighted by support 3, 2, 3
    assert m.weighted_recall == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 3 * 2 / 3) / 8)
    assert m.weighted_f1 == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 3 * 0.8) / 8)


def test_never_predicted_present_class_counts_as_zero_precision() -> None:
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0])
    m = classification_metrics(y, np.eye(2)[pred], ("A", "B"), y_pred=pred)
    assert m.per_class[1].precision is None and m.per_class[1].recall == 0.0
    assert m.macro_precision == pytest.approx((0.5 + 0.0) / 2)


def test_class_without_examples_never_divides_by_zero() -> None:
    y = np.array([0, 0, 1])
    m = classification_metrics(
        y, np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]]), ("A", "B", "C")
    )
    assert m.per_class[2].precision is None and m.per_class[2].f1 is None
    assert m.macro_f1 == pytest.approx(1.0)
    assert "C" in m.undefined_classes
    assert m.to_dict()["per_class"]["C"]["recall"] is None


def test_roc_auc_by_hand_with_ties() -> None:
    # positives score 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1
    auc = roc_auc_binary(np.array([1, 1, 0, 0], dtype=bool), np.array([0.8, 0.4, 0.4, 0.1]))
    assert auc == pytest.approx(3.5 / 4)
    assert roc_auc_binary(np.array([1, 1], dtype=bool), np.array([0.1, 0.2])) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_scikit_learn(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=60)
    p = rng.dirichlet(np.ones(4), size=60)
    p[:, 0] = np.round(p[:, 0], 1)  # ties
    m = classification_metrics(y, p, CLASSES)
    for c in range(4):
        assert m.per_class[c].roc_auc == pytest.approx(metrics.roc_auc_score(y == c, p[:, c]))
    ref = metrics.precision_recall_fscore_support(y, p.argmax(1), labels=range(4), zero_division=0)
    for c in range(4):
        assert m.per_class[c].f1 == pytest.approx(ref[2][c])


def test_ece_by_hand() -> None:
    # 4 bins. conf 0.9, 0.8 (bin 3, both right): |1 - 0.85| * 2; conf 0.6 (bin 2, wrong): |0 - 0.6|;
    # conf 0.3 (bin 1, right): |1 - 0.3|. ECE = (0.3 + 0.6 + 0.7) / 4 = 0.4
    conf = np.array([0.9, 0.8, 0.6, 0.3])
    ok = np.array([True, True, False, True])
    assert expected_calibration_error(conf, ok, n_bins=4) == pytest.approx(0.4)
    bins = reliability_bins(conf, ok, n_bins=4)
    assert [b.count for b in bins] == [0, 1, 1, 2]
    assert bins[0].accuracy is None and bins[3].confidence == pytest.approx(0.85)


def test_bins_are_right_closed_and_one_goes_last() -> None:
    np.testing.assert_array_equal(bin_index(np.array([0.0, 0.25, 0.2500001, 1.0]), 4), [0, 0, 1, 3])


def test_ece_of_the_fixed_example() -> None:
    m = classification_metrics(Y_TRUE, _probs(), CLASSES, ece_bins=10)
    # bins of 0.1: 0.4 (wrong) | 0.5 (wrong) | 0.6 (wrong) | 0.7 (right) | 0.8 (right) | 0.9 and 0.85 (both right,
    # mean 0.875) | 0.95 (right): (0.4 + 0.5 + 0.6 + 0.3 + 0.2 + 2 * 0.125 + 0.05) / 8 = 2.3 / 8
    assert m.ece == pytest.approx(2.3 / 8)


def test_metrics_match_scikit_learn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200)
    p[np.arange(200), y] += rng.random(200)  # better than chance, not perfect
    pred = p.argmax(1)
    m = metrics_record(y, p, FOUR, loss=0.5)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    f1 = skm.f1_score(y, pred, average=None)
    assert [m["per_class"][c]["f1"] for c in FOUR] == pytest.approx(list(f1))
    assert m["loss"] == 0.5 and m["n"] == 200


def test_training_s_record_leaves_an_absent_class_out_of_the_macro_average() -> None:
    """The record training logs each epoch is the evaluation's metrics: Normal, never predicted, scores 0
    (precision undefined); Viral Pneumonia, absent from the truth, is undefined and out of the average."""
    probs = np.eye(4)[[0, 1, 0, 1]]
    m = metrics_record(np.array([0, 1, 2, 1]), probs, FOUR)
    assert m["per_class"]["Normal"] | {"roc_auc": None} == {
        "support": 1,
        "predicted": 0,
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
        "roc_auc": None,
    }
    assert m["undefined_classes"] == ["Viral Pneumonia"] and m["per_class"]["Viral Pneumonia"]["f1"] is None
    # COVID f1 = 2*1/(2*1+1+0) = 2/3, Lung_Opacity 2*2/(2*2+0+0) = 1, Normal 0: mean over the three present
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3) and m["loss"] is None
