"""Train the base models with two-phase transfer learning: per member, ``RUN_DIR/members/<name>/`` holds
checkpoints, ``metrics.jsonl``/``.csv`` and ``predictions/{val,blend,test}`` (the stacking stage's input)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch

from cxr.data.manifest import Manifest
from cxr.errors import CheckpointError
from cxr.train.backbones import resolve_timm_name
from cxr.train.checkpoint import (
    RESUME_STATE,
    CheckpointInfo,
    link_checkpoint,
    load_weights,
    read_checkpoint_info,
    save_checkpoint,
    save_resume_state,
    versions,
)
from cxr.train.config import MemberConfig, TrainConfig, dump_config
from cxr.train.dataset import adopt_manifest, check_manifest, resolve_manifest
from cxr.train.distributed import (
    DistContext,
    all_gather_object,
    check_global_batch,
    current_context,
    forked_rng,
    on_main,
    rank_seed,
    resolve_device,
    rng_state,
    sync_module,
)
from cxr.train.epoch import predict_split, record_epoch, train_one_epoch, validate
from cxr.train.loop import PhaseState
from cxr.train.member import MemberRun, enter_phase, member_params, member_seed, phase_name, start_run
from cxr.train.predictions import write_predictions

__all__ = ["TrainResult", "batch_key", "describe", "prepare_data", "train_all", "train_member"]

log = logging.getLogger(__name__)

PREDICTED_SPLITS = ("val", "blend", "test")  # blend only where the manifest has one


@dataclass(frozen=True)
class TrainResult:
    name: str
    member_dir: Path
    metrics: dict[str, Any]  # best validation metrics (accuracy, macro_f1, per_class, confusion_matrix...)
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped_early: bool
    bad_images: tuple[str, ...] = ()
    predictions: dict[str, Path] = field(default_factory=dict)


def prepare_data(cfg: TrainConfig, dist: DistContext | None = None) -> Manifest:
    """Load or build the manifest, check it and save the resolved config (rank 0; the others receive it)."""

    def prepare() -> Manifest:
        manifest = adopt_manifest(resolve_manifest(cfg.data, Path(cfg.run_dir)), Path(cfg.run_dir))
        check_manifest(manifest)
        dump_config(cfg, Path(cfg.run_dir) / "config.yaml")
        return manifest

    return on_main(dist if dist is not None else current_context(), prepare)


def train_all(
    cfg: TrainConfig, *, progress_stream: TextIO | None = None, dist: DistContext | None = None
) -> tuple[TrainResult, ...]:
    """Train every member of ``cfg.models`` in order on one shared manifest."""
    ctx = dist if dist is not None else current_context()
    for m in cfg.models:  # fail before any file is written
        check_global_batch(ctx, cfg.batch_size(m), batch_key(cfg, m))
    resolve_device(cfg.train, ctx)
    manifest = prepare_data(cfg, ctx)
    return tuple(
        train_member(cfg, m.name, progress_stream=progress_stream, manifest=manifest, dist=ctx)
        for m in cfg.models
    )


def batch_key(cfg: TrainConfig, m: MemberConfig) -> str:
    """The config key that sets this member's (global) batch size."""
    return f"models.{m.name}.batch_size" if m.batch_size is not None else "train.batch_size"


def train_member(
    cfg: TrainConfig,
    member: str,
    *,
    progress_stream: TextIO | None = None,
    manifest: Manifest | None = None,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train one member (resuming from its ``last`` checkpoint when ``train.resume``) and predict.

    ``dist``: this process's place under torchrun (default: the initialised group, else one process).
    """
    start = time.perf_counter()
    ctx = dist if dist is not None else current_context()
    m = cfg.member(member)
    check_global_batch(ctx, cfg.batch_size(m), batch_key(cfg, m))
    setup = resolve_device(cfg.settings(m), ctx)
    if manifest is None:
        manifest = prepare_data(cfg, ctx)
    else:
        check_manifest(manifest)
    seed = member_seed(cfg, m.name)
    log.info(
        "training %s (%s, %dx%d px, pretrained=%s) on %s, precision %s%s",
        m.name,
        resolve_timm_name(m.backbone),
        *m.input_size,
        m.pretrained,
        setup.device,
        setup.precision,
        f", {ctx.world_size} processes x {cfg.batch_size(m) // ctx.world_size} images" if ctx.enabled else "",
    )
    with forked_rng(setup, rank_seed(seed, ctx)):
        run = start_run(cfg, m, manifest, setup, progress_stream if ctx.is_main else None, seed, ctx)
        try:  # the tracker ends either way
            _run_epochs(run)
            # finished: the optimiser state (2x the weights with Adam) only served an interrupted run
            on_main(run.ctx, partial((run.member_dir / RESUME_STATE).unlink, missing_ok=True))
            predictions = _write_member_predictions(run)
        finally:
            run.tracker.end()
    best = run.best_info or read_checkpoint_info(run.member_dir, "best")
    seconds = time.perf_counter() - start
    log.info(
        "%s done in %.0f s: best epoch %d, val macro-F1 %.4f, accuracy %.4f%s",
        m.name,
        seconds,
        best.epoch + 1,
        best.metrics["macro_f1"],
        best.metrics["accuracy"],
        " (stopped early)" if run.stopped_early else "",
    )
    return TrainResult(
        name=m.name,
        member_dir=run.member_dir,
        metrics=best.metrics,
        best_epoch=best.epoch,
        epochs_run=run.next_epoch,
        seconds=seconds,
        stopped_early=run.stopped_early,
        bad_images=tuple(sorted({*run.train_bad.paths, *run.val_bad.paths})),
        predictions=predictions,
    )


def _run_epochs(run: MemberRun) -> None:
    while run.next_epoch < run.train.epochs and not run.stopped_early:
        epoch = run.next_epoch
        phase = phase_name(run.cfg, epoch)
        current = run.phase if run.phase is not None and phase == run.phase_name else enter_phase(run, phase)
        if epoch == run.cfg.train.adapt_epochs:  # patience counts fine-tuning epochs (the best may be older)
            run.stopper.bad_epochs = 0
        stats = train_one_epoch(run, current, epoch, phase)
        val = validate(run, epoch)
        improved = run.stopper.update(float(val[run.stopper.metric]), epoch)
        more = epoch + 1 < run.train.epochs
        run.stopped_early = phase == "finetune" and run.stopper.should_stop and more
        record_epoch(run, epoch, phase, stats, val, improved)
        run.next_epoch = epoch + 1
        _save_epoch(run, current, epoch, phase, val, improved)

    def check() -> None:
        if run.best_info is None and not (run.member_dir / "best.json").is_file():
            raise CheckpointError(f"{run.member.name}: no epoch was trained, so there is no best checkpoint")

    on_main(run.ctx, check)


def _save_epoch(
    run: MemberRun, current: PhaseState, epoch: int, phase: str, val: dict[str, Any], improved: bool
) -> None:
    info = CheckpointInfo(
        name=run.member.name,
        backbone=run.member.backbone,
        timm_name=resolve_timm_name(run.member.backbone),
        classes=tuple(run.manifest.classes),
        preprocess=run.member.spec,
        metrics=val,
        sha256="",
        epoch=epoch,
        config=member_params(run.cfg, run.member),
        versions=versions(),
        extra={
            "phase": phase,
            "manifest_digest": run.manifest.digest(),
            "stopped_early": run.stopped_early,
            "step": current.step,
            "early_stopping": asdict(run.stopper),
            "bad_train": sorted(run.train_bad.paths),
            **run.provenance,
        },
    )
    rng_ranks = all_gather_object(run.ctx, rng_state(run.setup)) if run.ctx.enabled else None

    def write() -> CheckpointInfo | None:
        best = None
        if improved:
            best = save_checkpoint(run.member_dir, "best", run.model, info)
            link_checkpoint(run.member_dir, "best", "last", best)
        else:
            save_checkpoint(run.member_dir, "last", run.model, info)
        state = {
            "epoch": epoch,
            "phase": phase,
            "step": current.step,
            "optimizer": current.optimizer.state_dict(),
            "scheduler": current.scheduler.state_dict(),
            "scaler": current.scaler.state_dict() if current.scaler is not None else {},
            "rng": torch.get_rng_state(),
            "cuda_rng": rng_state(run.setup)["cuda"],
            "rng_ranks": rng_ranks,  # None for one process
        }
        save_resume_state(run.member_dir, state)
        return best

    best = on_main(run.ctx, write)
    if best is not None:
        run.best_info = best


def _write_member_predictions(run: MemberRun) -> dict[str, Path]:
    """The best checkpoint's probabilities for every val and test image (the stacking stage's input)."""
    info = on_main(run.ctx, partial(_load_best, run))
    sync_module(run.ctx, run.model)  # rank 0's best weights (and BatchNorm statistics) everywhere
    # The predictions that feed stacking and evaluation must be the ones the FP32 ONNX members ship:
    # whatever precision trained the member (bf16/fp16 autocast), they are computed in FP32.
    fp32 = replace(run.setup, amp_dtype=None)
    # A member smaller than the ensemble's input is fed by the fused graph after a second, in-graph resize
    # from the largest member size: predict through the same two resizes, so stacking sees what ships.
    via = max((m.input_size for m in run.cfg.models), key=lambda s: (s[0] * s[1], s))
    out: dict[str, Path] = {}
    for split in (s for s in PREDICTED_SPLITS if s in run.manifest.splits()):
        table = predict_split(
            run.model,
            run.manifest,
            split,
            info.preprocess,
            run.cfg.train.eval_batch_size,
            fp32,
            member=run.member.name,
            checkpoint_sha256=info.sha256,
            num_workers=run.cfg.data.num_workers,
            shard=run.ctx,
            via=via,
        )
        out[split] = on_main(run.ctx, partial(write_predictions, table, run.member_dir / "predictions"))
    run.best_info = info
    return out


def _load_best(run: MemberRun) -> CheckpointInfo:
    """The best checkpoint's info, its weights loaded into the model unless the model already holds them."""
    info = read_checkpoint_info(run.member_dir, "best")
    if (
        run.best_info is None
        or run.best_info.sha256 != info.sha256
        or run.stopper.best_epoch != run.next_epoch - 1
    ):
        # the model in memory is not the best epoch's: load the best weights (hash-checked)
        load_weights(run.model, run.member_dir, "best", info)
    return info


def describe(results: Sequence[TrainResult]) -> str:
    """What `cxr train base` prints: a row per member (best epoch, epochs, validation metrics, seconds)."""
    lines = [f"{'member':<18}{'best epoch':>11}{'epochs':>8}{'val acc':>9}{'macro-F1':>10}{'seconds':>9}"]
    lines += [
        f"{r.name:<18}{r.best_epoch + 1:>11}{r.epochs_run:>8}{r.metrics['accuracy']:>9.4f}"
        f"{r.metrics['macro_f1']:>10.4f}{r.seconds:>9.0f}" + ("  (stopped early)" if r.stopped_early else "")
        for r in results
    ]
    return "\n".join(lines)
