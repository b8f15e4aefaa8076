"""Calibration math: takes probabilities (or confidences and hits); makes tempered probabilities, ECE,
bins."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise; a probability of exactly 0 (an unseen class) stays 0."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(p) / float(temperature)
    z = z - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=1, keepdims=True)


def uncalibrate(p_cal: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before a temperature was applied: ``softmax(log p_cal * T)``."""
    return apply_temperature(p_cal, 1.0 / temperature)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # mean confidence in the bin (None when empty)
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: (i/B, (i+1)/B] -> i, with 0 in bin 0."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> tuple[ReliabilityBin, ...]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    idx = bin_index(conf, n_bins)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lower=b / n_bins,
                upper=(b + 1) / n_bins,
                count=n,
                confidence=float(conf[sel].mean()) if n else None,
                accuracy=float(ok[sel].mean()) if n else None,
            )
        )
    return tuple(out)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float | None:
    """ECE in [0, 1]; ``None`` for no examples."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size == 0:
        return None
    total = 0.0
    for b in reliability_bins(conf, correct, n_bins):
        if b.count and b.confidence is not None and b.accuracy is not None:
            total += b.count * abs(b.accuracy - b.confidence)
    return total / conf.size
