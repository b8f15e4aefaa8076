"""Takes labels and probabilities; makes classification ``Metrics`` where ``None`` marks an undefined
value."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.calibration import expected_calibration_error


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    support: int
    predicted: int
    precision: float | None
    recall: float | None
    f1: float | None
    roc_auc: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


@dataclass(frozen=True)
class Metrics:
    n: int
    accuracy: float
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    weighted_precision: float | None
    weighted_recall: float | None
    weighted_f1: float | None
    macro_roc_auc: float | None
    ece: float | None
    per_class: tuple[ClassMetrics, ...]
    confusion: np.ndarray  # int64 [K, K]: rows true class, columns predicted class
    undefined_classes: tuple[str, ...]  # classes without support: excluded from the macro averages

    def to_dict(self) -> dict[str, Any]:
        scalars = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:10]}  # n ... ece
        return {
            **scalars,
            "per_class": {c.name: c.to_dict() for c in self.per_class},
            "confusion_matrix": self.confusion.tolist(),
            "undefined_classes": list(self.undefined_classes),
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def per_class_prf(cm: np.ndarray) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """Precision, recall and F1 per class from a confusion matrix (``None`` where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = [_ratio(t, p) for t, p in zip(tp, predicted, strict=True)]
    recall = [_ratio(t, s) for t, s in zip(tp, support, strict=True)]
    # F1 = 2 TP / (2 TP + FP + FN), and 2 TP + FP + FN = predicted + support
    f1 = [None if s == 0 else _ratio(2 * t, p + s) for t, p, s in zip(tp, predicted, support, strict=True)]
    return precision, recall, f1


def macro_weighted(
    values: Sequence[float | None], support: np.ndarray, *, undefined_as_zero: bool
) -> tuple[float | None, float | None]:
    """Macro and support-weighted means over classes with support; a supported class's ``None`` counts as 0
    when ``undefined_as_zero`` (precision of a class never predicted), else it is left out."""
    kept = [
        (0.0 if v is None else v, float(s))
        for v, s in zip(values, support, strict=True)
        if s != 0 and (v is not None or undefined_as_zero)
    ]
    if not kept:
        return None, None
    vals, w = np.asarray(kept).T.copy()  # contiguous rows: the same sums as from lists
    return float(np.mean(vals)), float(np.dot(vals, w) / w.sum())


def roc_auc_binary(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); ``None`` if one-sided."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, tie_group, ties = np.unique(
        np.asarray(score, dtype=np.float64), return_inverse=True, return_counts=True
    )
    ranks = (np.cumsum(ties) - (ties - 1) / 2.0)[tie_group]  # average rank (1-based) of each run of ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    y_pred: np.ndarray | None = None,
    ece_bins: int = 15,
) -> Metrics:
    """All metrics of one method. ``y_pred`` defaults to the argmax of ``probs`` (first class on ties)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape != (y_true.size, k):
        raise ValueError(f"probs shape {probs.shape} does not match {y_true.size} labels and {k} classes")
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    pred = np.argmax(probs, axis=1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, pred, k)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision, recall, f1 = per_class_prf(cm)
    aucs = [roc_auc_binary(y_true == c, probs[:, c]) for c in range(k)]  # one-vs-rest
    per_class = tuple(
        ClassMetrics(
            name=classes[i],
            support=int(support[i]),
            predicted=int(predicted[i]),
            precision=precision[i],
            recall=recall[i],
            f1=f1[i],
            roc_auc=aucs[i],
        )
        for i in range(k)
    )
    mp, wp = macro_weighted(precision, support, undefined_as_zero=True)
    mr, wr = macro_weighted(recall, support, undefined_as_zero=False)
    mf, wf = macro_weighted(f1, support, undefined_as_zero=False)
    defined_auc = [a for a in aucs if a is not None]
    conf = probs[np.arange(y_true.size), pred]
    return Metrics(
        n=int(y_true.size),
        accuracy=float(np.mean(pred == y_true)),
        macro_precision=mp,
        macro_recall=mr,
        macro_f1=mf,
        weighted_precision=wp,
        weighted_recall=wr,
        weighted_f1=wf,
        macro_roc_auc=float(np.mean(defined_auc)) if defined_auc else None,
        ece=expected_calibration_error(conf, pred == y_true, ece_bins),
        per_class=per_class,
        confusion=cm,
        undefined_classes=tuple(classes[i] for i in range(k) if support[i] == 0),
    )


def metrics_record(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
    """``classification_metrics(...).to_dict()`` with the mean ``loss``: what training logs per epoch."""
    record = classification_metrics(y_true, probs, classes).to_dict()
    record["loss"] = None if loss is None else float(loss)
    return record


def macro_f1_from_labels(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float | None:
    """Macro-F1 over the classes with support (the bootstrap's statistic)."""
    cm = confusion_matrix(y_true, y_pred, k)
    _, _, f1 = per_class_prf(cm)
    return macro_weighted(f1, cm.sum(axis=1), undefined_as_zero=False)[0]


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log likelihood of the true class, probabilities clipped at 1e-15."""
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0))))
