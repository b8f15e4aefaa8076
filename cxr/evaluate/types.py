"""``EvalConfig`` in; ``MethodResult`` per method and ``EvalResult`` out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ConfigError
from cxr.evaluate.calibration_check import CalibrationSummary, OperatingPointResult
from cxr.evaluate.selective import SelectiveReport
from cxr.evaluate.stats import Interval, McNemarResult
from cxr.metrics import Metrics

SOFT, MAJORITY, STACKING = "soft_vote", "majority_vote", "stacking"
UNCALIBRATED, REFERENCE = "stacking_uncalibrated", "reference"  # stacking before its temperature: no test


@dataclass(frozen=True)
class EvalConfig:
    run_dir: Path
    out_dir: Path | None = None  # default RUN_DIR/eval
    stack_dir: Path | None = None  # default RUN_DIR/stack
    split: str = "test"
    n_bootstrap: int = 2000
    confidence: float = 0.95
    alpha: float = 0.05  # significance level of McNemar's test for "stacking helps"
    exact_below: int = 25  # McNemar: exact binomial test below this many discordant pairs
    ece_bins: int = 15
    seed: int = 0
    plots: bool = True
    fused_model: Path | None = None  # runs the input gate (selective report); default RUN_DIR/ensemble.onnx

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise ConfigError(
                f"split {self.split!r} cannot be evaluated", hint="use 'test' (or 'val' for a look)"
            )
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be 0 or more, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1 or not 0 < self.alpha < 1:
            raise ConfigError(f"confidence {self.confidence} and alpha {self.alpha} must lie in (0, 1)")
        if self.ece_bins < 1:
            raise ConfigError(f"ece_bins must be at least 1, got {self.ece_bins}")

    @property
    def eval_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(self.run_dir) / "eval"

    @property
    def meta_dir(self) -> Path:
        return Path(self.stack_dir) if self.stack_dir is not None else Path(self.run_dir) / "stack"


@dataclass(frozen=True)
class MethodResult:
    key: str  # "member:<name>", "soft_vote", "majority_vote", "stacking", "stacking_uncalibrated", "baseline:<name>"
    name: str
    kind: str  # "member" | "soft_vote" | "majority_vote" | "stacking" | "reference" | "baseline"
    metrics: Metrics
    accuracy_ci: Interval
    macro_f1_ci: Interval
    predictions: np.ndarray = field(repr=False)  # int64 [N]
    confidence: np.ndarray = field(repr=False)  # [N] probability (vote share) of the predicted class
    correct: np.ndarray = field(repr=False)  # bool [N]

    @property
    def slug(self) -> str:
        return self.key.replace("member:", "member_")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            **self.metrics.to_dict(),
            "accuracy_ci": self.accuracy_ci.to_list(),
            "macro_f1_ci": self.macro_f1_ci.to_list(),
        }


@dataclass(frozen=True)
class EvalResult:
    methods: tuple[MethodResult, ...]
    best_member: str
    best_member_rule: str
    tests: dict[str, McNemarResult]
    stacking_helps: bool
    verdict: str
    table: str
    classes: tuple[str, ...]
    undefined_classes: tuple[str, ...]
    n: int
    report_md: Path
    report_json: Path
    figures: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    calibration: CalibrationSummary | None = None  # None: the meta-learner records no calibration
    operating_points: tuple[OperatingPointResult, ...] | None = None  # None: it records none
    members: tuple[str, ...] = ()
    manifest_digest: str = ""
    meta_json: Mapping[str, Any] = field(default_factory=dict, repr=False)
    selective: SelectiveReport | None = None  # the risk-coverage curve and the input gate's point on it

    def method(self, key: str) -> MethodResult:
        return {m.key: m for m in self.methods}[key]
