"""Optimiser and learning-rate schedule of one training phase.

Takes: the trainable parameters, the phase's base learning rate, ``TrainSettings`` and the number of
iterations per epoch. Makes: the optimiser (AdamW, Adam or SGD with momentum) and a cosine schedule with
warm restarts (``CosineAnnealingWarmRestarts``) counted in iterations: the first cycle lasts
``t0_epochs`` epochs, each next one ``t_mult`` times longer, the rate decays from the base rate to
``base * min_lr_ratio`` within a cycle and jumps back at each restart. Call ``scheduler.step()`` after
every optimiser step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from cxr.train.config import ScheduleConfig, TrainSettings


def make_optimizer(
    params: Iterable[torch.nn.Parameter], settings: TrainSettings, lr: float
) -> torch.optim.Optimizer:
    """AdamW / Adam use the fused kernel where torch has one for the parameters' device (CPU and CUDA):
    on the CPU it is ~13x faster than the default per-tensor loop for VGG19's 140M parameters."""
    params = list(params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    try:
        return cls(params, lr=lr, weight_decay=settings.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype/torch version
        return cls(params, lr=lr, weight_decay=settings.weight_decay)


def cycle_iterations(sched: ScheduleConfig, iters_per_epoch: int) -> int:
    """Length of the first cosine cycle in iterations (at least 1)."""
    return max(1, round(sched.t0_epochs * iters_per_epoch))


def make_scheduler(
    optimizer: torch.optim.Optimizer, sched: ScheduleConfig, iters_per_epoch: int
) -> CosineAnnealingWarmRestarts:
    base = optimizer.param_groups[0]["lr"]
    return CosineAnnealingWarmRestarts(
        optimizer,
        T_0=cycle_iterations(sched, iters_per_epoch),
        T_mult=sched.t_mult,
        eta_min=base * sched.min_lr_ratio,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
