"""Validation metrics from labels and predictions (numpy only).

Takes: true class indices, predicted class indices (or probabilities), the class list and the mean loss.
Makes: a JSON-ready dict with ``loss``, ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
``per_class`` (precision, recall, f1, support per class) and ``confusion_matrix`` (rows: true class,
columns: predicted class). A class that is never predicted (or never present) scores 0 for the undefined
ratio, as scikit-learn's ``zero_division=0`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], loss: float | None = None
) -> dict[str, Any]:
    """All validation metrics; ``y_pred`` may be indices [N] or probabilities [N, K]."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=1)
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    precision = _ratio(tp, cm.sum(axis=0).astype(np.float64))
    recall = _ratio(tp, cm.sum(axis=1).astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    return {
        "loss": None if loss is None else float(loss),
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "n": n,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
