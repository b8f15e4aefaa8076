"""The typed config and results of pooling cross-validation folds (``PoolConfig`` -> ``PooledResult``).

Takes: nothing but the standard library and the statistics types. Makes: the frozen dataclasses that
``cxr.evaluate.pooled`` fills and ``cxr.evaluate.pooled_report`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.evaluate.stats import Interval, McNemarResult

BEST = "best_member"  # each fold's best member (validation), pooled


@dataclass(frozen=True)
class PoolConfig:
    run_dirs: tuple[Path, ...]
    out_dir: Path
    n_bootstrap: int = 2000
    confidence: float = 0.95
    alpha: float = 0.05
    exact_below: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.run_dirs) < 2:
            raise ConfigError(
                f"pooling needs the run directories of at least 2 folds, got {len(self.run_dirs)}",
                hint="pass every fold's run directory, e.g. runs/folds/fold0 ... runs/folds/fold4",
            )
        if self.n_bootstrap < 0 or not 0 < self.confidence < 1 or not 0 < self.alpha < 1:
            raise ConfigError(
                f"n_bootstrap {self.n_bootstrap} must be >= 0, confidence {self.confidence} and alpha "
                f"{self.alpha} in (0, 1)"
            )


@dataclass(frozen=True)
class PooledMethod:
    key: str
    n: int
    accuracy: float
    macro_f1: float | None
    accuracy_ci: Interval
    macro_f1_ci: Interval
    per_fold_accuracy: tuple[float, ...]


@dataclass(frozen=True)
class PooledResult:
    methods: tuple[PooledMethod, ...]
    tests: dict[str, McNemarResult]
    n: int
    folds: tuple[dict[str, Any], ...]  # per run: run_dir, fold, folds, n, best member
    report_md: Path
    report_json: Path
    warnings: tuple[str, ...] = ()
    # each member alone vs each baseline: descriptive, not pre-specified, no multiplicity correction
    member_tests: dict[str, McNemarResult] = field(default_factory=dict)

    def method(self, key: str) -> PooledMethod:
        return next(m for m in self.methods if m.key == key)
