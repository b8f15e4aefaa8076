"""A temperature for the stacked output (Guo et al. 2017) and per-class operating points.

Takes: cross-validated meta-learner probabilities and their labels. Makes: ``Temperature`` (T minimising
the NLL of ``softmax(log p / T)``; argmax unchanged; T = 1 below ``MIN_CALIBRATION_PREDICTIONS``) and per
class the ``OperatingPoint``: the highest threshold whose sensitivity reaches the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.calibration import apply_temperature, expected_calibration_error
from cxr.errors import ConfigError
from cxr.metrics import log_loss

LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: far outside what a sane meta-learner needs
DEFAULT_TARGET = 0.95
MIN_CALIBRATION_PREDICTIONS = 100  # fewer cross-validated predictions: T = 1, and the record says why


def _ece(y: np.ndarray, p: np.ndarray) -> float | None:
    return expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y)


@dataclass(frozen=True)
class Temperature:
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float | None
    ece_after: float | None
    n: int
    skipped: str | None = None  # why no temperature was fitted (T = 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "none" if self.skipped else "temperature",
            **({"skipped": self.skipped} if self.skipped else {}),
            "temperature": self.temperature,
            "fitted_on": None
            if self.skipped
            else "cross-validated meta-learner probabilities on the meta-training split",
            "n": self.n,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }


def fit_temperature(
    y: np.ndarray, probs: np.ndarray, minimum: int = MIN_CALIBRATION_PREDICTIONS
) -> Temperature:
    """The NLL-optimal temperature of ``probs`` for labels ``y``.

    T = 1 when there is nothing to fit (one class), and with ``skipped`` set when there are fewer than
    ``minimum`` predictions.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    before = log_loss(y, p)
    if y.size < minimum:
        why = f"calibration skipped: {y.size} validation predictions < minimum {minimum}"
        ece = _ece(y, p)
        return Temperature(1.0, before, before, ece, ece, int(y.size), skipped=why)
    t = 1.0
    if y.size >= 2 and np.unique(y).size >= 2:
        res = minimize_scalar(
            lambda log_t: log_loss(y, apply_temperature(p, math.exp(log_t))),
            bounds=LOG_T_BOUNDS,
            method="bounded",
        )
        if res.success and log_loss(y, apply_temperature(p, math.exp(res.x))) < before:
            t = float(math.exp(res.x))
    cal = apply_temperature(p, t)
    return Temperature(t, before, log_loss(y, cal), _ece(y, p), _ece(y, cal), int(y.size))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    target_sensitivity: float
    sensitivity: float  # reached on the split it was chosen on
    specificity: float | None
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "val_sensitivity": self.sensitivity,
            "val_specificity": self.specificity,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "rule": "highest threshold on p(class) whose validation sensitivity reaches the target",
        }


def check_targets(targets: Mapping[str, float], classes: Sequence[str]) -> dict[str, float]:
    """The targets as {class: float in (0, 1]}, or a ConfigError naming the bad entry."""
    out: dict[str, float] = {}
    for name, value in targets.items():
        if name not in classes:
            raise ConfigError(
                f"operating point for unknown class {name!r}", hint=f"use one of {', '.join(classes)}"
            )
        v = float(value)
        if not 0.0 < v <= 1.0:
            raise ConfigError(
                f"target sensitivity {value!r} for {name} is outside (0, 1]",
                hint="give a fraction, e.g. 0.95",
            )
        out[name] = v
    return out


def operating_points(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], targets: Mapping[str, float]
) -> dict[str, OperatingPoint]:
    """One operating point per class in ``targets`` that has a positive in ``y`` (see the module docstring)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    out: dict[str, OperatingPoint] = {}
    for name, target in check_targets(targets, classes).items():
        k = list(classes).index(name)
        pos = np.sort(p[y == k, k])[::-1]
        neg = p[y != k, k]
        if pos.size == 0:
            continue
        threshold = float(pos[max(0, math.ceil(target * pos.size) - 1)])
        out[name] = OperatingPoint(
            threshold=threshold,
            target_sensitivity=target,
            sensitivity=float(np.mean(pos >= threshold)),
            specificity=float(np.mean(neg < threshold)) if neg.size else None,
            n_positive=int(pos.size),
            n_negative=int(neg.size),
        )
    return out


def default_targets(classes: Sequence[str]) -> dict[str, float]:
    """Every class at 95% sensitivity: a screening setting; a site sets its own in the stack config."""
    return {c: DEFAULT_TARGET for c in classes}
