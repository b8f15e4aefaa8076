"""The meta-learners cxr can train (class, fixed parameters, grid), chosen by cross-validation, saved without pickle.

``cross_validate`` picks the parameters by stratified K-fold mean log loss (folds shrink for rare classes).

``save_estimator`` writes a JSON-able description and an ``.npz`` of the fitted arrays and requires the
reloaded estimator to reproduce ``predict_proba``; ``load_estimator`` only instantiates classes of the table.
"""

from __future__ import annotations

import difflib
import itertools
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cxr.errors import ConfigError, DataError, ModelError
from cxr.metrics import log_loss


@dataclass(frozen=True)
class EstimatorKind:
    cls: type
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    notes: str = ""


ESTIMATORS: dict[str, EstimatorKind] = {
    "logistic_regression": EstimatorKind(
        LogisticRegression,
        {"max_iter": 5000},
        {"C": (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0, 316.0, 1000.0)},
        "multinomial logistic regression, L2; C chosen by cross-validated log loss",
    ),
    "lda": EstimatorKind(
        LinearDiscriminantAnalysis,
        {"solver": "lsqr"},
        {"shrinkage": ("auto", 0.1, 0.3, 0.6, 0.9)},
        "linear discriminant analysis with covariance shrinkage (needs three or more classes)",
    ),
    "gaussian_nb": EstimatorKind(
        GaussianNB,
        {},
        {"var_smoothing": (1e-9, 1e-7, 1e-5, 1e-3, 1e-2)},
        "Gaussian naive Bayes",
    ),
}


def resolve_kind(name: str) -> EstimatorKind:
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    close = difflib.get_close_matches(name, list(ESTIMATORS), n=3, cutoff=0.4)
    raise ConfigError(
        f"unknown meta-learner {name!r}",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + f"choose one of {', '.join(ESTIMATORS)}",
    )


def full_proba(est: Any, features: np.ndarray, k: int) -> np.ndarray:
    """``predict_proba`` widened to all K classes (0 for a class the estimator never saw)."""
    p = est.predict_proba(features)
    out = np.zeros((p.shape[0], k), dtype=np.float64)
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


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
    keys = sorted(grid)
    candidates = [dict(zip(keys, v, strict=True)) for v in itertools.product(*(grid[k] for k in keys))]
    scores: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], np.ndarray] | None = None
    for cand in candidates or [{}]:
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


_SCALARS = (bool, int, float, str, type(None))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def estimator_state(est: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(description, arrays) of a fitted estimator; refuse state that cannot be stored safely."""
    kind = next((name for name, k in ESTIMATORS.items() if type(est) is k.cls), None)
    if kind is None:
        raise ConfigError(
            f"{type(est).__name__} is not a meta-learner cxr can store and convert",
            hint=f"choose one of {', '.join(ESTIMATORS)}",
        )
    params = {k: _plain(v) for k, v in est.get_params(deep=False).items()}
    bad = [k for k, v in params.items() if not _jsonable(v)]
    if bad:
        raise ModelError(
            f"{kind}: parameter(s) {', '.join(bad)} cannot be stored as JSON", hint="use plain values"
        )
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(est).items():
        if name in params:
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        elif isinstance(value, _SCALARS) or isinstance(value, np.generic):
            scalars[name] = _plain(value)
        else:
            raise ModelError(
                f"{kind}: fitted attribute {name} ({type(value).__name__}) cannot be stored without pickle",
                hint=f"use one of the meta-learners {', '.join(ESTIMATORS)}",
            )
    return {"kind": kind, "params": params, "scalars": scalars, "arrays": sorted(arrays)}, arrays


def load_estimator(description: Mapping[str, Any], npz_path: Path) -> Any:
    """Rebuild the estimator from ``description`` (as written by ``save_estimator``) and its ``.npz``."""
    kind = str(description.get("kind", ""))
    if kind not in ESTIMATORS:
        raise ModelError(
            f"meta-learner kind {kind!r} in {npz_path} is not one cxr knows ({', '.join(ESTIMATORS)})",
            hint="re-train the meta-learner with `cxr stack`",
            path=npz_path,
        )
    if not Path(npz_path).is_file():
        raise ModelError(
            f"meta-learner arrays {npz_path} are missing", hint="re-run `cxr stack`", path=npz_path
        )
    est = ESTIMATORS[kind].cls(**dict(description["params"]))
    for name, value in dict(description.get("scalars", {})).items():
        setattr(est, name, value)
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [a for a in description.get("arrays", []) if a not in data.files]
        if missing:
            raise ModelError(f"{npz_path} lacks array(s) {', '.join(missing)}", hint="re-run `cxr stack`")
        for name in description.get("arrays", []):
            setattr(est, name, data[name])
    return est


def save_estimator(est: Any, npz_path: Path, check_features: np.ndarray) -> dict[str, Any]:
    """Write the arrays to ``npz_path``; return the description to store in meta.json (round trip checked)."""
    description, arrays = estimator_state(est)
    npz_path = Path(npz_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    with npz_path.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)  # type: ignore[arg-type]  # numpy's stub cannot type **arrays
    again = load_estimator(json.loads(json.dumps(description)), npz_path)
    if not np.array_equal(again.predict_proba(check_features), est.predict_proba(check_features)):
        raise ModelError(
            f"{description['kind']}: reloading the saved meta-learner does not reproduce its probabilities",
            hint=f"use one of the meta-learners {', '.join(ESTIMATORS)}",
        )
    return description
