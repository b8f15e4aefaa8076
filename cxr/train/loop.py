"""One epoch of training and one pass of evaluation, as small functions.

Takes: a model, a loader of ``Batch`` objects, the loss, the phase's optimiser and scheduler, and the
``DeviceSetup``. Makes: ``EpochStats`` (mean loss, accuracy, images, seconds, learning rates) or the
probabilities of a split. The scheduler is stepped after every optimiser step. Running out of memory on
a batch becomes a ``TrainError`` that names the batch size to try instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.train.dataset import BadImages, Batch
from cxr.train.device import DeviceSetup
from cxr.train.errors import TrainError
from cxr.train.progress import Progress
from cxr.train.schedule import current_lr

StepHook = Callable[[int, float, float], None]  # (global step, loss, lr)


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


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr_start: float
    lr_end: float
    lr_min: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def oom_error(batch_size: int, setup: DeviceSetup, training: bool) -> TrainError:
    smaller = max(1, batch_size // 2)
    if training:
        fix = f"--set train.batch_size={smaller} (or --set models.<name>.batch_size={smaller} for one member)"
    else:
        fix = f"--set train.eval_batch_size={smaller}"
    return TrainError(
        f"ran out of {'GPU' if setup.device.type == 'cuda' else 'host'} memory "
        f"{'training on' if training else 'evaluating'} a batch of {batch_size} images on {setup.device}",
        hint=f"try a smaller batch: {fix}; on a GPU, bf16/fp16 precision also lowers activation memory",
    )


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, weight=weights)


def train_step(state: PhaseState, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Forward, weighted loss, backward, optimiser and scheduler step; returns (loss, correct)."""
    setup = state.setup
    x, y = setup.to_input(x), y.to(setup.device, non_blocking=setup.pin_memory)
    try:
        with setup.autocast():
            logits = state.model(x)
        loss = weighted_ce(logits, y, state.class_weights)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if is_oom(e):
            raise oom_error(int(x.shape[0]), setup, training=True) from e
        raise
    state.scheduler.step()
    state.step += 1
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainError(
            f"the training loss became {value} at step {state.step}",
            hint="lower the learning rate (train.adapt_lr / train.finetune_lr), or use fp32 precision",
        )
    correct = int((logits.detach().argmax(dim=1) == y).sum())
    return value, correct


def train_epoch(
    state: PhaseState,
    loader: Iterable[Batch],
    bad: BadImages,
    progress: Progress,
    on_step: StepHook | None = None,
) -> EpochStats:
    start = time.perf_counter()
    lr_start = lr_min = current_lr(state.optimizer)
    loss_sum, correct, images = 0.0, 0, 0
    for batch in loader:
        bad.add(batch.bad)
        if batch.x is None:
            progress.update(1)
            continue
        loss, ok = train_step(state, batch.x, batch.y)
        n = len(batch)
        loss_sum, correct, images = loss_sum + loss * n, correct + ok, images + n
        lr = current_lr(state.optimizer)
        lr_min = min(lr_min, lr)
        progress.update(1, items=n, loss=loss_sum / images, acc=correct / images, lr=lr)
        if on_step is not None:
            on_step(state.step, loss, lr)
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=loss_sum / images if images else float("nan"),
        accuracy=correct / images if images else 0.0,
        images=images,
        seconds=seconds,
        lr_start=lr_start,
        lr_end=current_lr(state.optimizer),
        lr_min=lr_min,
    )


@dataclass(frozen=True)
class Predictions:
    index: np.ndarray  # int64 [N] dataset row indices (unreadable images left out)
    labels: np.ndarray  # int64 [N]
    probs: np.ndarray  # float64 [N, K]
    loss: float  # class-weighted mean cross-entropy (nan without weights given)


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
            try:
                with setup.autocast():
                    logits = model(x).float()
            except (RuntimeError, torch.OutOfMemoryError) as e:
                if is_oom(e):
                    raise oom_error(int(x.shape[0]), setup, training=False) from e
                raise
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
            progress.update(1, items=len(batch))
    k = _num_outputs(model)
    return Predictions(
        index=np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        probs=np.concatenate(probs) if probs else np.zeros((0, k), dtype=np.float64),
        loss=loss_sum / weight_sum if weight_sum else float("nan"),
    )


def _num_outputs(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 0)
