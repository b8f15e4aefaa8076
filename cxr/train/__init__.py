"""The training stage (torch, timm): base models by two-phase transfer learning, and the linear probe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.train.config import TrainConfig, load_config
    from cxr.train.probe import ProbeConfig, ProbeResult, describe_probe, linear_probe
    from cxr.train.run import TrainResult, describe, train_all, train_member

__all__ = [
    "ProbeConfig",
    "ProbeResult",
    "TrainConfig",
    "TrainResult",
    "describe",
    "describe_probe",
    "linear_probe",
    "load_config",
    "train_all",
    "train_member",
]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.train.config": ["TrainConfig", "load_config"],
        "cxr.train.run": ["TrainResult", "describe", "train_all", "train_member"],
        "cxr.train.probe": ["ProbeConfig", "ProbeResult", "describe_probe", "linear_probe"],
    },
)
