"""Early stopping on one validation metric with patience; remembers the best epoch.

Takes: the metric's value after each epoch. Says: whether it improved (save the best checkpoint) and
whether to stop. Its state is plain JSON, so it is saved with the checkpoint and restored on resume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class EarlyStopping:
    metric: str
    mode: Literal["min", "max"]
    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; True when it is the new best."""
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def restart_patience(self) -> None:
        """Forget the epochs without improvement so far (a new phase starts); the best is kept."""
        self.bad_epochs = 0

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
