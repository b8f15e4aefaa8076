"""One epoch of a member (train, validate, record its row and log line) and ``predict_split``."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.data.manifest import Manifest
from cxr.errors import TrainError
from cxr.metrics import metrics_record
from cxr.progress import Progress, format_seconds
from cxr.spec import PreprocessSpec
from cxr.train.backbones import train_mode
from cxr.train.dataset import BadImages, make_dataset, make_loader
from cxr.train.distributed import SINGLE, DeviceSetup, DistContext, all_gather_object, on_main, sync_module
from cxr.train.loop import (
    EpochStats,
    PhaseState,
    Predictions,
    concat_predictions,
    merge_epoch_stats,
    predict_batches,
    train_epoch,
)
from cxr.train.member import MemberRun, train_loader
from cxr.train.predictions import PredictionTable

log = logging.getLogger(__name__)


def train_one_epoch(run: MemberRun, current: PhaseState, epoch: int, phase: str) -> EpochStats:
    # frozen BatchNorm keeps ImageNet statistics: random-init members need their batch statistics
    frozen = run.cfg.train.finetune_frozen_norm and run.member.pretrained is not False
    train_mode(run.model, phase, frozen_norm=frozen)
    run.train_set.set_epoch(epoch)
    loader = train_loader(run, epoch)
    desc = f"{run.member.name} {phase} {epoch + 1}/{run.train.epochs}"
    progress = Progress(len(loader), desc, run.progress_stream)

    def on_step(step: int, loss: float, lr: float) -> None:
        run.tracker.log_metrics({"lr": lr, "train_loss_step": loss}, step=step, epoch=epoch)

    stats = train_epoch(current, loader, run.train_bad, progress, on_step)
    progress.close()
    if not run.ctx.enabled:
        return stats
    # every process learns the unreadable images the others met (and all apply the same limit)
    for paths in all_gather_object(run.ctx, dict(run.train_bad.paths)):
        run.train_bad.merge(paths)
    if stats.skipped_steps:
        log.warning(
            "%s epoch %d: %d step(s) skipped because a process had no readable image in its share",
            run.member.name,
            epoch + 1,
            stats.skipped_steps,
        )
    return merge_epoch_stats(stats, current.all_reduce, run.setup.device)


def gather(ctx: DistContext, preds: Predictions) -> Predictions:
    """Every process's predictions as one, in dataset order."""
    return concat_predictions(all_gather_object(ctx, preds))


def validate(run: MemberRun, epoch: int) -> dict[str, Any]:
    """Validation metrics, the same on every process (computed on rank 0 from all processes' parts)."""
    sync_module(run.ctx, run.model, buffers_only=True)  # evaluate rank 0's model (the one saved)
    loader = make_loader(
        run.val_set,
        batch_size=run.cfg.train.eval_batch_size,
        shuffle=False,
        num_workers=run.cfg.data.num_workers,
        pin_memory=run.setup.pin_memory,
        shard=run.ctx,
    )
    start = time.perf_counter()
    progress = Progress(len(loader), f"{run.member.name} val {epoch + 1}", run.progress_stream)
    preds = predict_batches(
        run.model, loader, run.setup, class_weights=run.weights, bad=run.val_bad, progress=progress
    )
    if run.ctx.enabled:
        preds = gather(run.ctx, preds)
        for paths in all_gather_object(run.ctx, dict(run.val_bad.paths)):
            run.val_bad.merge(paths)

    def compute() -> dict[str, Any]:
        metrics = metrics_record(preds.labels, preds.probs, tuple(run.manifest.classes), preds.loss)
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        return metrics

    metrics = on_main(run.ctx, compute)
    progress.close(loss=metrics["loss"], acc=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    return metrics


def record_epoch(
    run: MemberRun, epoch: int, phase: str, stats: EpochStats, val: dict[str, Any], improved: bool
) -> None:
    """The epoch's metrics row (rank 0 writes it), the tracker's copy, and the epoch's log line."""
    row = {
        "epoch": epoch,
        "phase": phase,
        "lr_start": stats.lr_start,
        "lr_end": stats.lr_end,
        "lr_min": stats.lr_min,
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "train_images": stats.images,
        "train_seconds": round(stats.seconds, 3),
        "train_images_per_s": round(stats.images_per_s, 3),
        "val": val,
        "best": improved,
        "bad_images": len(run.train_bad.paths) + len(run.val_bad.paths),
    }
    on_main(run.ctx, partial(run.metrics_log.append, row))
    run.tracker.log_metrics(
        {k: v for k, v in row.items() if k != "phase"}, step=run.phase.step if run.phase else 0, epoch=epoch
    )
    run.epoch_seconds.append(stats.seconds + float(val.get("seconds", 0.0)))
    remaining = (run.train.epochs - epoch - 1) * sum(run.epoch_seconds) / len(run.epoch_seconds)
    log.info(
        "%s epoch %d/%d %s: train loss %.4f acc %.3f | val loss %.4f acc %.3f macro-F1 %.4f | lr %.2e->%.2e "
        "| %.0f s, %.1f img/s, member ETA %s%s",
        run.member.name,
        epoch + 1,
        run.train.epochs,
        phase,
        stats.loss,
        stats.accuracy,
        val["loss"],
        val["accuracy"],
        val["macro_f1"],
        stats.lr_start,
        stats.lr_end,
        stats.seconds,
        stats.images_per_s,
        format_seconds(0 if run.stopped_early else remaining),
        " *best*" if improved else "",
    )


def predict_split(
    model: nn.Module,
    manifest: Manifest,
    split: str,
    spec: PreprocessSpec,
    batch_size: int,
    setup: DeviceSetup,
    *,
    member: str = "",
    checkpoint_sha256: str = "",
    num_workers: int = 0,
    shard: DistContext = SINGLE,
    via: tuple[int, int] | None = None,
) -> PredictionTable:
    """Eval-mode probabilities (float64, softmax) for ``split``; moves ``model`` to ``setup.device``.

    ``via``: resize to the ensemble's input size first, as the fused graph does (see ``eval_transform``);
    under DDP each process predicts its ``shard`` and all receive the whole split.
    """
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = make_dataset(manifest, split, spec, train=False, via=via)
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=setup.pin_memory,
        shard=shard,
    )
    preds = predict_batches(model, loader, setup, bad=BadImages(dataset, 1.0))
    if shard.enabled:
        preds = gather(shard, preds)
    rows = [dataset.rows[int(i)] for i in preds.index]
    k = len(manifest.classes)
    probs = preds.probs if len(rows) else np.zeros((0, k), dtype=np.float64)
    if probs.shape != (len(rows), k):
        raise TrainError(
            f"the model gives {probs.shape[1]} outputs but the manifest has {k} classes",
            hint="use a checkpoint trained on this manifest's classes",
        )
    return PredictionTable(
        member=member,
        split=split,
        manifest_digest=manifest.digest(),
        classes=tuple(manifest.classes),
        paths=tuple(r.path for r in rows),
        labels=tuple(r.label for r in rows),
        probs=probs,
        checkpoint_sha256=checkpoint_sha256,
        precision=setup.precision,
        via=(int(via[0]), int(via[1])) if via is not None and tuple(via) != spec.input_size else None,
    )
