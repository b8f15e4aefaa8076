"""The training step and epoch, evaluation batches, the optimiser, its schedule and early stopping.

Under DDP each process back-propagates ``world_size * sum(w_i * loss_i) / global weight total``, so DDP's
gradient average is the gradient of the global batch's weighted mean loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from cxr.errors import TrainError
from cxr.progress import Progress
from cxr.train.config import ScheduleConfig, TrainSettings
from cxr.train.dataset import BadImages, Batch
from cxr.train.distributed import DeviceSetup

StepHook = Callable[[int, float, float], None]  # (global step, loss, lr)
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sum over processes


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class PhaseState:
    """Everything one optimisation step needs."""

    model: nn.Module
    class_weights: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    setup: DeviceSetup
    scaler: torch.amp.GradScaler | None = None
    step: int = 0
    world_size: int = 1
    all_reduce: Reduce = field(default=_no_reduce)
    nonfinite: tuple[float, int] | None = None  # DDP: a loss of this process that all must stop on


@dataclass(frozen=True)
class EpochStats:
    images: int
    seconds: float
    lr_start: float
    lr_end: float
    lr_min: float
    loss_sum: float  # sum over steps of (global step loss x global step images), this process's share
    correct: int
    skipped_steps: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def oom_hint(batch_size: int, setup: DeviceSetup, training: bool, world_size: int = 1) -> Iterator[None]:
    """Running out of memory in the block becomes a ``TrainError`` that names a smaller batch
    (``batch_size``: the global batch in training, else this process's evaluation batch)."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is one; the CPU allocator raises a plain one
        text = str(e).lower()
        if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in text:
            if "can't allocate memory" not in text:
                raise
        if training:
            smaller = max(world_size, batch_size // 2 // world_size * world_size)
            fix = f"--set train.batch_size={smaller} (or --set models.<name>.batch_size={smaller} for one member)"
        else:
            fix = f"--set train.eval_batch_size={max(1, batch_size // 2)}"
        raise TrainError(
            f"ran out of {'GPU' if setup.device.type == 'cuda' else 'host'} memory "
            f"{'training on' if training else 'evaluating'} a batch of {batch_size} images on {setup.device}",
            hint=f"try a smaller batch: {fix}; on a GPU, bf16/fp16 precision also lowers activation memory",
        ) from e


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, weight=weights)


@dataclass(frozen=True)
class StepResult:
    loss: float  # this process's share of the global batch's weighted mean loss (all of it for one)
    correct: int  # correctly classified images of this process
    images: int  # images of this process
    global_images: int  # images of the global batch


def _global_totals(state: PhaseState, y: torch.Tensor | None) -> tuple[float, int, bool]:
    """(class-weight total, images, whether some process has none) over all processes; raises everywhere
    when one of them met a non-finite loss in the step before."""
    n = 0 if y is None else y.numel()
    bad = 1.0 if state.nonfinite is not None else 0.0
    local = torch.tensor([n, n, n == 0, bad], dtype=torch.float64, device=state.setup.device)
    if n and state.class_weights is not None:
        local[0] = state.class_weights[y].double().sum()
    total = state.all_reduce(local)
    if total[3] > 0:
        raise nonfinite_error(state.nonfinite or (float("nan"), state.step))
    return float(total[0]), int(total[1]), bool(total[2] > 0)


def nonfinite_error(where: tuple[float, int]) -> TrainError:
    """``where``: (the loss, its step; -1: somewhere in the epoch)."""
    value, step = where
    at = f"at step {step}" if step >= 0 else "during the epoch (in one of the training processes)"
    return TrainError(
        f"the training loss became {value} {at}",
        hint="lower the learning rate (train.adapt_lr / train.finetune_lr), or use fp32 precision",
    )


def train_step(state: PhaseState, x: torch.Tensor | None, y: torch.Tensor | None) -> StepResult | None:
    """One optimisation step on this process's share of a global batch; ``None``: skipped everywhere."""
    setup = state.setup
    distributed = state.world_size > 1
    y = None if x is None or y is None else y.to(setup.device, non_blocking=setup.pin_memory)
    if distributed:
        weight_total, global_images, someone_empty = _global_totals(state, y)
        if someone_empty:
            return None
    if x is None or y is None:
        return None
    x = setup.to_input(x)
    with oom_hint(int(x.shape[0]) * state.world_size, setup, True, state.world_size):
        with setup.autocast():
            logits = state.model(x)
        if distributed:
            per_image = F.cross_entropy(logits.float(), y, weight=state.class_weights, reduction="sum")
            share = per_image / weight_total
            loss = share * state.world_size
        else:
            loss = share = weighted_ce(logits, y, state.class_weights)
            global_images = int(y.numel())
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    value = float(share.detach())
    if not math.isfinite(value):
        if not distributed:
            raise nonfinite_error((value, state.step))
        state.nonfinite = (value, state.step)  # all processes stop together at the next step (or epoch end)
    correct = int((logits.detach().argmax(dim=1) == y).sum())
    return StepResult(value, correct, int(y.numel()), global_images)


def train_epoch(
    state: PhaseState,
    loader: Iterable[Batch],
    bad: BadImages,
    progress: Progress,
    on_step: StepHook,
) -> EpochStats:
    """One pass over this process's batches (under DDP ``merge_epoch_stats`` makes the global figures)."""
    start = time.perf_counter()
    lr_start = lr_min = current_lr(state.optimizer)
    loss_sum, correct, images, skipped = 0.0, 0, 0, 0
    for batch in loader:
        bad.add(batch.bad)
        r = train_step(state, batch.x, batch.y)
        if r is None:
            skipped += 1
            progress.update(1, items=0)
            continue
        # one process: loss x images; DDP: its share of the global loss x global images (sums to the same)
        loss_sum += r.loss * r.global_images
        correct, images = correct + r.correct, images + r.images
        lr = current_lr(state.optimizer)
        lr_min = min(lr_min, lr)
        progress.update(1, items=r.images, loss=loss_sum / images, acc=correct / images, lr=lr)
        # under DDP: this process's share x N, an estimate of the global step loss (exact for one)
        on_step(state.step, r.loss * state.world_size, lr)
    seconds = time.perf_counter() - start
    return EpochStats(
        images, seconds, lr_start, current_lr(state.optimizer), lr_min, loss_sum, correct, skipped
    )


def merge_epoch_stats(stats: EpochStats, reduce: Reduce, device: torch.device) -> EpochStats:
    """The epoch's figures over all processes (the sums of their shares); unchanged for one process."""
    t = reduce(
        torch.tensor([stats.loss_sum, stats.correct, stats.images], dtype=torch.float64, device=device)
    )
    loss_sum, correct, images = float(t[0]), int(round(float(t[1]))), int(round(float(t[2])))
    if not math.isfinite(loss_sum):  # the same sum on every process: all stop together
        raise nonfinite_error((loss_sum, -1))
    return replace(stats, loss_sum=loss_sum, correct=correct, images=images)


@dataclass(frozen=True)
class Predictions:
    index: np.ndarray  # int64 [N] dataset row indices (unreadable images left out)
    labels: np.ndarray  # int64 [N]
    probs: np.ndarray  # float64 [N, K]
    loss_sum: float  # the class-weighted cross-entropy sum...
    weight_sum: float  # ...and its weight total (to combine the parts of several processes)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.weight_sum if self.weight_sum else float("nan")


@torch.no_grad()
def predict_batches(
    model: nn.Module,
    loader: Iterable[Batch],
    setup: DeviceSetup,
    *,
    class_weights: torch.Tensor | None = None,
    bad: BadImages | None = None,
    progress: Progress | None = None,
) -> Predictions:
    """Softmax probabilities for every readable image, in loader order, plus the weighted loss."""
    model.eval()
    idx: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    loss_sum, weight_sum = 0.0, 0.0
    for batch in loader:
        if bad is not None:
            bad.add(batch.bad)
        if batch.x is not None:
            x = setup.to_input(batch.x)
            y = batch.y.to(setup.device)
            with oom_hint(int(x.shape[0]), setup, training=False), setup.autocast():
                logits = model(x).float()
            w = (
                class_weights
                if class_weights is not None
                else torch.ones(logits.shape[1], device=setup.device)
            )
            loss_sum += float(F.cross_entropy(logits, y, weight=w, reduction="sum"))
            weight_sum += float(w[y].sum())
            probs.append(torch.softmax(logits, dim=1).double().cpu().numpy())
            idx.append(batch.index.numpy())
            labels.append(batch.y.numpy())
        if progress is not None:
            progress.update(1, items=len(batch.y))
    k = int(getattr(model, "num_classes", 0) or 0)
    return Predictions(
        index=np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        probs=np.concatenate(probs) if probs else np.zeros((0, k), dtype=np.float64),
        loss_sum=loss_sum,
        weight_sum=weight_sum,
    )


def concat_predictions(parts: Sequence[Predictions]) -> Predictions:
    """The predictions of several processes' parts of a split as one, in dataset order."""
    parts = [p for p in parts if len(p.index)] or list(parts[:1])
    index = np.concatenate([p.index for p in parts])
    order = np.argsort(index, kind="stable")
    return Predictions(
        index=index[order],
        labels=np.concatenate([p.labels for p in parts])[order],
        probs=np.concatenate([p.probs for p in parts])[order],
        loss_sum=sum(p.loss_sum for p in parts),
        weight_sum=sum(p.weight_sum for p in parts),
    )


def make_optimizer(
    params: Iterable[torch.nn.Parameter], settings: TrainSettings, lr: float
) -> torch.optim.Optimizer:
    """AdamW / Adam with the fused kernel where torch has one for the parameters' device, or SGD."""
    params = list(params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    try:
        return cls(params, lr=lr, weight_decay=settings.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype/torch version
        return cls(params, lr=lr, weight_decay=settings.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, sched: ScheduleConfig, iters_per_epoch: int
) -> CosineAnnealingWarmRestarts:
    """Cosine decay to ``base * min_lr_ratio`` with warm restarts, counted in iterations (step every one)."""
    base = optimizer.param_groups[0]["lr"]
    return CosineAnnealingWarmRestarts(
        optimizer,
        T_0=max(1, round(sched.t0_epochs * iters_per_epoch)),
        T_mult=sched.t_mult,
        eta_min=base * sched.min_lr_ratio,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@dataclass
class EarlyStopping:
    """Patience on one validation metric; remembers the best epoch; its state is plain JSON."""

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

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience
