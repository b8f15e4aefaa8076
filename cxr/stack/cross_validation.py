"""Choosing the meta-learner's hyper-parameters: stratified K-fold cross-validation by mean log loss.

Takes: a scikit-learn estimator class, fixed params and a grid, the meta-training features and labels.
Makes: the best params, every candidate's score, and the cross-validated probabilities of the best
(which give the meta-learner's validation metrics), with notes when the folds had to shrink.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxr.errors import DataError
from cxr.metrics import log_loss


def full_proba(est: Any, features: np.ndarray, k: int) -> np.ndarray:
    """``predict_proba`` widened to all K classes (0 for a class the estimator never saw)."""
    p = est.predict_proba(features)
    out = np.zeros((p.shape[0], k), dtype=np.float64)
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


def _candidates(grid: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    from itertools import product

    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in product(*(grid[k] for k in keys))]


def _cv_splits(y: np.ndarray, folds: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    notes: list[str] = []
    if y.size < 4:
        raise DataError(
            f"only {y.size} meta-training image(s): too few to choose the meta-learner's regularisation",
            hint="use more validation images (a larger data set, or a larger validation fraction)",
        )
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        n_splits = min(folds, y.size // 2)
        notes.append(
            f"cross-validation is not stratified ({n_splits} plain folds): a class has a single "
            "meta-training image"
        )
        plain = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(plain.split(np.zeros((y.size, 1)))), notes
    n_splits = max(2, min(folds, smallest))
    if n_splits < folds:
        notes.append(
            f"cross-validation uses {n_splits} folds instead of {folds}: the rarest class has {smallest} "
            "meta-training image(s)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros((y.size, 1)), y)), notes


def fit_quietly(cls: type, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    est = cls(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    return est


def cross_validate(
    cls: type,
    fixed: Mapping[str, Any],
    grid: Mapping[str, tuple[Any, ...]],
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    *,
    folds: int,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray, list[str]]:
    """(best params, score per candidate, cross-validated probabilities of the best, notes)."""
    splits, notes = _cv_splits(y, folds, seed)
    scores: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], np.ndarray] | None = None
    for cand in _candidates(grid) or [{}]:
        params = {**fixed, **cand}
        oof = np.zeros((y.size, k), dtype=np.float64)
        for train_idx, held_idx in splits:
            est = fit_quietly(cls, params, x[train_idx], y[train_idx])
            oof[held_idx] = full_proba(est, x[held_idx], k)
        loss = log_loss(y, oof)
        scores.append({"params": cand, "log_loss": loss})
        if best is None or loss < best[0] - 1e-12:
            best = (loss, params, oof)
    assert best is not None  # the candidate list is never empty
    return best[1], scores, best[2], notes
