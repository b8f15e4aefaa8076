"""The training stage (torch, timm): base models by two-phase transfer learning, and the linear probe."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.train.config import TrainConfig, load_config
    from cxr.train.probe import ProbeConfig, ProbeResult, describe_probe, linear_probe
    from cxr.train.run import TrainResult, train_all, train_member

_EXPORTS = {
    "TrainConfig": "cxr.train.config",
    "load_config": "cxr.train.config",
    "TrainResult": "cxr.train.run",
    "train_all": "cxr.train.run",
    "train_member": "cxr.train.run",
    "ProbeConfig": "cxr.train.probe",
    "ProbeResult": "cxr.train.probe",
    "describe_probe": "cxr.train.probe",
    "linear_probe": "cxr.train.probe",
}

__all__ = [
    "ProbeConfig",
    "ProbeResult",
    "TrainConfig",
    "TrainResult",
    "describe_probe",
    "linear_probe",
    "load_config",
    "train_all",
    "train_member",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
