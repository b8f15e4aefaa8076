"""The stacked output before and after its temperature, and the recorded operating points measured on a split.

Takes: the meta-learner's metadata, the calibrated stacked probabilities and the labels. Makes:
``CalibrationSummary`` and one ``OperatingPointResult`` per class (Wilson intervals).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.calibration import uncalibrate
from cxr.errors import ModelError
from cxr.evaluate.stats import NO_INTERVAL, Interval, wilson_interval
from cxr.metrics import log_loss

UNCALIBRATED_NAME = "stacking (before calibration)"


def temperature_of(info: Mapping[str, Any]) -> float | None:
    """The temperature built into ``meta.onnx`` (1.0 for ``method: none``); ``None`` when none is recorded."""
    cal = info.get("calibration")
    if not isinstance(cal, Mapping):
        return None
    raw = cal.get("temperature", 1.0)
    try:
        t = float(raw)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t) or t <= 0:
        raise ModelError(
            f"the meta-learner's calibration temperature {raw!r} is not a positive number",
            hint="re-run `cxr stack`",
        )
    return t


def mean_nll(y: np.ndarray, p: np.ndarray) -> float | None:
    """Mean negative log likelihood of the true class (probabilities clipped at 1e-15); ``None`` for no rows."""
    y = np.asarray(y, dtype=np.int64)
    return None if y.size == 0 else log_loss(y, np.asarray(p, dtype=np.float64))


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class CalibrationSummary:
    method: str  # "temperature" | "none"
    temperature: float
    fitted_on: str | None
    val_n: int | None  # the validation figures are the metadata's; T was fitted on them (in-sample for T)
    val_ece_before: float | None
    val_ece_after: float | None
    val_nll_before: float | None
    val_nll_after: float | None
    val_in_sample: bool = field(default=True, init=False)  # T was fitted on the validation figures
    split: str
    n: int
    ece_before: float | None  # on ``split``, computed here
    ece_after: float | None
    nll_before: float | None
    nll_after: float | None
    ece_bins: int


def calibration_summary(
    info: Mapping[str, Any],
    split: str,
    y: np.ndarray,
    p_cal: np.ndarray,
    ece: tuple[float | None, float | None],
    ece_bins: int,
) -> CalibrationSummary | None:
    """Before/after figures of the temperature (``ece``: the split's (before, after), from the method rows)."""
    t = temperature_of(info)
    if t is None:
        return None
    cal = info["calibration"]
    p_before = uncalibrate(p_cal, t) if t != 1.0 else p_cal
    return CalibrationSummary(
        method=str(cal.get("method", "temperature")),
        temperature=t,
        fitted_on=cal.get("fitted_on"),
        val_n=None if cal.get("n") is None else int(cal["n"]),
        val_ece_before=_num(cal.get("ece_before")),
        val_ece_after=_num(cal.get("ece_after")),
        val_nll_before=_num(cal.get("nll_before")),
        val_nll_after=_num(cal.get("nll_after")),
        split=split,
        n=int(np.asarray(y).size),
        ece_before=ece[0],
        ece_after=ece[1],
        nll_before=mean_nll(y, p_before),
        nll_after=mean_nll(y, p_cal),
        ece_bins=ece_bins,
    )


@dataclass(frozen=True)
class OperatingPointResult:
    name: str  # the class
    threshold: float  # on the calibrated probability of the class; above = p >= threshold
    target_sensitivity: float | None
    val_sensitivity: float | None  # from the metadata (the split the threshold was chosen on)
    val_specificity: float | None
    val_n_positive: int | None
    val_n_negative: int | None
    rule: str | None
    split: str
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float | None  # on ``split``; None where the split has no positives (skipped)
    sensitivity_ci: Interval
    specificity: float | None
    specificity_ci: Interval
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "rule": self.rule,
            "val_sensitivity": self.val_sensitivity,
            "val_specificity": self.val_specificity,
            "val_n_positive": self.val_n_positive,
            "val_n_negative": self.val_n_negative,
            "split": self.split,
            "tp": self.tp,
            "fn": self.fn,
            "tn": self.tn,
            "fp": self.fp,
            "n_positive": self.tp + self.fn,
            "n_negative": self.tn + self.fp,
            "sensitivity": self.sensitivity,
            "sensitivity_ci": self.sensitivity_ci.to_list(),
            "specificity": self.specificity,
            "specificity_ci": self.specificity_ci.to_list(),
            "skipped": self.skipped,
        }


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


def operating_point(
    name: str, record: Mapping[str, Any], k: int, split: str, y: np.ndarray, p_cal: np.ndarray, level: float
) -> OperatingPointResult:
    """The operating point ``record`` (metadata) of class ``k`` measured on ``y`` / ``p_cal``."""
    threshold = float(record["threshold"])
    pos = np.asarray(y) == k
    above = np.asarray(p_cal, dtype=np.float64)[:, k] >= threshold
    tp, fn = int(np.sum(above & pos)), int(np.sum(~above & pos))
    tn, fp = int(np.sum(~above & ~pos)), int(np.sum(above & ~pos))
    skipped = None if tp + fn else f"no {split} images of {name}"
    return OperatingPointResult(
        name=name,
        threshold=threshold,
        target_sensitivity=_num(record.get("target_sensitivity")),
        val_sensitivity=_num(record.get("val_sensitivity")),
        val_specificity=_num(record.get("val_specificity")),
        val_n_positive=_int(record.get("n_positive")),
        val_n_negative=_int(record.get("n_negative")),
        rule=record.get("rule"),
        split=split,
        tp=tp,
        fn=fn,
        tn=tn,
        fp=fp,
        sensitivity=None if skipped else tp / (tp + fn),
        sensitivity_ci=NO_INTERVAL if skipped else wilson_interval(tp, tp + fn, level),
        specificity=None if skipped or not tn + fp else tn / (tn + fp),
        specificity_ci=NO_INTERVAL if skipped else wilson_interval(tn, tn + fp, level),
        skipped=skipped,
    )


def operating_points(
    info: Mapping[str, Any],
    classes: Sequence[str],
    split: str,
    y: np.ndarray,
    p_cal: np.ndarray,
    level: float = 0.95,
) -> tuple[tuple[OperatingPointResult, ...] | None, list[str]]:
    """(each recorded operating point measured on the split, notes); ``None`` when the metadata has none."""
    points = info.get("operating_points")
    if not isinstance(points, Mapping):
        return None, []
    out: list[OperatingPointResult] = []
    notes: list[str] = []
    for name, record in points.items():
        if name not in classes or not isinstance(record, Mapping) or "threshold" not in record:
            notes.append(
                f"operating point {name!r} left out: not a class of these predictions, or no threshold"
            )
            continue
        op = operating_point(str(name), record, list(classes).index(name), split, y, p_cal, level)
        if op.skipped:
            notes.append(f"operating point of {name} not measured: {op.skipped}")
        out.append(op)
    return tuple(out), notes
