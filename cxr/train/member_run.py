"""One member's run: takes a ``TrainConfig`` and a member, makes its ``MemberRun`` state, folder and seed.

``MemberRun`` is what changes from epoch to epoch (model, phase, early stopping, bad images, logs);
``member_dir``/``member_seed``/``member_params`` are derived from the config alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from cxr.data.manifest import Manifest
from cxr.train.backbones import resolve_timm_name
from cxr.train.checkpoint import CheckpointInfo
from cxr.train.config import MemberConfig, TrainConfig, TrainSettings, config_to_dict
from cxr.train.dataset import BadImages, ManifestDataset, Shard
from cxr.train.device import DeviceSetup
from cxr.train.distributed import SINGLE, DistContext
from cxr.train.early_stopping import EarlyStopping
from cxr.train.loop import PhaseState
from cxr.train.tracking import MetricsLog, Tracker


@dataclass
class MemberRun:
    """The state of one member's training that changes from epoch to epoch."""

    cfg: TrainConfig
    member: MemberConfig
    member_dir: Path
    manifest: Manifest
    setup: DeviceSetup
    model: nn.Module
    weights: torch.Tensor | None
    stopper: EarlyStopping
    metrics_log: MetricsLog
    tracker: Tracker
    train_set: ManifestDataset
    val_set: ManifestDataset
    train_bad: BadImages
    val_bad: BadImages
    progress_stream: TextIO | None
    next_epoch: int = 0
    phase: PhaseState | None = None
    phase_name: str = ""
    stopped_early: bool = False
    best_info: CheckpointInfo | None = None
    seed: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    resumed_step: int = 0
    ctx: DistContext = SINGLE
    provenance: dict[str, Any] = field(
        default_factory=dict
    )  # "pretrained" and "dataset" (cxr.train.provenance)

    @property
    def shard(self) -> Shard:
        return Shard(self.ctx.rank, self.ctx.world_size)

    @property
    def train(self) -> TrainSettings:
        """``train:`` as it applies to this member (its own epochs and precision, where it has them)."""
        return self.cfg.settings(self.member)


def member_dir(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.run_dir) / "members" / name


def member_seed(cfg: TrainConfig, name: str) -> int:
    return int(np.random.SeedSequence([cfg.seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def member_params(cfg: TrainConfig, m: MemberConfig) -> dict[str, Any]:
    """The config that shaped this member (stored in its checkpoints and sent to the tracker)."""
    return {
        "member": config_to_dict(m),
        "timm_name": resolve_timm_name(m.backbone),
        "train": config_to_dict(cfg.settings(m)),
        "data": config_to_dict(cfg.data),
        "seed": cfg.seed,
        "run_dir": str(cfg.run_dir),
    }
