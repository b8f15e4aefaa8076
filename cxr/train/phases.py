"""The two training phases: takes a ``MemberRun`` and an epoch, makes the phase's ``PhaseState``.

Phase 1 (``adapt``) trains the new head with the backbone frozen, phase 2 (``finetune``) everything;
entering a phase freezes or unfreezes and gives it its own optimiser, schedule and DDP wrapper.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from cxr.train.backbones import set_phase
from cxr.train.config import TrainConfig
from cxr.train.dataset import epoch_generator, make_loader
from cxr.train.distributed import all_reduce_sum, wrap_ddp
from cxr.train.loop import PhaseState
from cxr.train.member_run import MemberRun
from cxr.train.schedule import make_optimizer, make_scheduler

log = logging.getLogger(__name__)


def phase_name(cfg: TrainConfig, epoch: int) -> str:
    return "adapt" if epoch < cfg.train.adapt_epochs else "finetune"


def train_loader(run: MemberRun, epoch: int) -> DataLoader[Any]:
    return make_loader(
        run.train_set,
        batch_size=run.cfg.batch_size(run.member),
        shuffle=True,
        num_workers=run.cfg.data.num_workers,
        pin_memory=run.setup.pin_memory,
        generator=epoch_generator(run.seed, epoch),
        shard=run.shard,
    )


def enter_phase(run: MemberRun, phase: str) -> PhaseState:
    """Freeze or unfreeze, and give the phase its own optimiser and restarting cosine schedule."""
    settings = run.cfg.train
    params = set_phase(run.model, phase, run.member.finetune_from)
    lr = run.cfg.learning_rate(run.member, phase)
    optimizer = make_optimizer(params, settings, lr)
    scheduler = make_scheduler(optimizer, settings.scheduler, max(1, len(train_loader(run, 0))))
    scaler = torch.amp.GradScaler("cuda") if run.setup.use_scaler else None
    step = run.phase.step if run.phase is not None else run.resumed_step
    # a new DDP wrapper per phase: DDP registers the trainable parameters when it wraps the model
    run.phase = PhaseState(
        wrap_ddp(run.ctx, run.model, run.setup.device),
        run.weights,
        optimizer,
        scheduler,
        run.setup,
        scaler,
        step,
        world_size=run.ctx.world_size,
        all_reduce=partial(all_reduce_sum, run.ctx),
    )
    run.phase_name = phase
    trainable = sum(p.numel() for p in params)
    log.info("%s: phase %s, %d trainable parameters, lr %.2e", run.member.name, phase, trainable, lr)
    return run.phase
