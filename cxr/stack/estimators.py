"""The meta-learners cxr can train: a table of scikit-learn estimators cxr.stack.portable_meta writes as ONNX.

Each row: the class, fixed constructor parameters, and the grid searched by cross-validation on the
meta-training set. The default, ``logistic_regression``, is multinomial logistic regression (scikit-learn's
default for more than two classes) with its inverse regularisation ``C`` chosen by cross-validation.
Every row's fitted state is plain arrays, so ``cxr.stack.store`` saves it without pickle.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cxr.errors import ConfigError


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


def kind_of(est: Any) -> str:
    for name, kind in ESTIMATORS.items():
        if type(est) is kind.cls:
            return name
    raise ConfigError(
        f"{type(est).__name__} is not a meta-learner cxr can store and convert",
        hint=f"choose one of {', '.join(ESTIMATORS)}",
    )
