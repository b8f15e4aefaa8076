"""Train the ensemble's base models with the study's two-phase transfer learning.

Takes: a ``TrainConfig`` and a member name (or all members). Makes, per member, in
``RUN_DIR/members/<name>/``: ``best``/``last`` checkpoints (``cxr.train.checkpoint``), the resume state,
``metrics.jsonl``/``metrics.csv`` (one row per epoch) and ``predictions/{val,test}.csv|.json`` (the
best model's class probabilities, which the stacking stage consumes); ``RUN_DIR/config.yaml`` holds the
resolved config. Phase 1 (``adapt``, ``train.adapt_epochs``) trains only the new head at
``train.adapt_lr`` with the backbone frozen; phase 2 (``finetune``) trains everything at
``train.finetune_lr``; both use cosine decay with warm restarts stepped per iteration. Validation runs
every epoch; the best epoch by ``train.early_stopping.metric`` is kept and fine-tuning stops after
``patience`` epochs without improvement.

Under ``torchrun`` (``cxr.train.distributed``) the same functions run in every process: each trains on
its share of every global batch (DDP averages the gradients), validation and prediction are split over
the processes and gathered, rank 0 alone writes the run directory and decides what all must agree on.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr.data.manifest import Manifest
from cxr.data.weights import class_weights
from cxr.errors import CheckpointError
from cxr.metrics import metrics_record
from cxr.progress import Progress, format_seconds
from cxr.train.backbones import create_backbone, resolve_timm_name, set_phase, train_mode
from cxr.train.checkpoint import (
    RESUME_STATE,
    CheckpointInfo,
    link_checkpoint,
    load_resume_state,
    load_state,
    load_weights,
    read_checkpoint_info,
    save_checkpoint,
    save_resume_state,
    versions,
)
from cxr.train.config import MemberConfig, TrainConfig, TrainSettings, config_to_dict, dump_config
from cxr.train.dataset import (
    BadImages,
    ManifestDataset,
    Shard,
    adopt_manifest,
    check_manifest,
    epoch_generator,
    make_dataset,
    make_loader,
    resolve_manifest,
    train_counts,
)
from cxr.train.device import DeviceSetup, forked_rng, resolve_device
from cxr.train.distributed import (
    SINGLE,
    DistContext,
    all_gather_object,
    all_reduce_sum,
    check_global_batch,
    convert_sync_batchnorm,
    current_context,
    on_main,
    rank_seed,
    sync_module,
    wrap_ddp,
)
from cxr.train.early_stopping import EarlyStopping
from cxr.train.loop import (
    EpochStats,
    PhaseState,
    Predictions,
    concat_predictions,
    merge_epoch_stats,
    predict_batches,
    train_epoch,
)
from cxr.train.predict import predict_split
from cxr.train.predictions import write_predictions
from cxr.train.provenance import dataset_provenance, weights_provenance
from cxr.train.schedule import make_optimizer, make_scheduler
from cxr.train.tracking import MetricsLog, NullTracker, Tracker, make_tracker

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


def prepare_data(cfg: TrainConfig, dist: DistContext | None = None) -> Manifest:
    """Load or build the manifest, check it can train, and save the resolved config in the run dir
    (on rank 0 under torchrun; the other processes receive the manifest)."""

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

    ``dist``: this process's place under torchrun (default: the initialised process group, else one
    process); every process of the group must call this with the same arguments.
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
        run = _start_run(cfg, m, manifest, setup, progress_stream if ctx.is_main else None, seed, ctx)
        try:
            _run_epochs(run)
            # finished: the optimiser state (2x the weights with Adam) only served an interrupted run
            on_main(ctx, partial((run.member_dir / RESUME_STATE).unlink, missing_ok=True))
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


# ---------------------------------------------------------------------------------------------------------
# Setting up a member
# ---------------------------------------------------------------------------------------------------------


def _start_run(
    cfg: TrainConfig,
    m: MemberConfig,
    manifest: Manifest,
    setup: DeviceSetup,
    progress_stream: TextIO | None,
    seed: int,
    ctx: DistContext = SINGLE,
) -> MemberRun:
    mdir = member_dir(cfg, m.name)
    classes = tuple(manifest.classes)

    def look() -> bool:
        mdir.mkdir(parents=True, exist_ok=True)
        return cfg.train.resume and (mdir / "last.json").is_file()

    resume = on_main(ctx, look)
    model = _build_model(ctx, m, len(classes), False if resume else m.pretrained, seed)
    model = convert_sync_batchnorm(ctx, model, setup.device, cfg.train.sync_batchnorm)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    sync_module(ctx, model)  # rank 0's weights (ImageNet or resumed) everywhere
    es = cfg.train.early_stopping
    weights = None
    if cfg.train.class_weights:
        counts = train_counts(manifest)
        weights = torch.tensor(
            class_weights(counts, classes, cfg.train.class_weight_cap), dtype=torch.float32
        )
        weights = weights.to(setup.device)
        log.info("class weights %s", dict(zip(classes, (round(float(w), 4) for w in weights), strict=True)))
    train_set = make_dataset(manifest, "train", m.spec, train=True, seed=seed)
    val_set = make_dataset(manifest, "val", m.spec, train=False)
    run = MemberRun(
        cfg=cfg,
        member=m,
        member_dir=mdir,
        manifest=manifest,
        setup=setup,
        model=model,
        weights=weights,
        stopper=EarlyStopping(es.metric, es.mode, es.patience, es.min_delta),
        metrics_log=MetricsLog(mdir),
        tracker=_make_tracker(ctx, cfg, m),
        train_set=train_set,
        val_set=val_set,
        train_bad=BadImages(train_set, cfg.data.max_bad_fraction, defer_check=ctx.enabled),
        val_bad=BadImages(val_set, cfg.data.max_bad_fraction, defer_check=ctx.enabled),
        progress_stream=progress_stream,
        seed=seed,
        ctx=ctx,
        provenance={
            "pretrained": weights_provenance(resolve_timm_name(m.backbone), m.pretrained),
            "dataset": dataset_provenance(manifest),
        },
    )
    if resume:
        book = on_main(ctx, partial(_read_resume, run))
        sync_module(ctx, run.model)
        _apply_resume(run, book)
    else:
        if cfg.train.resume:
            log.info("%s: no checkpoint in %s to resume from; training from scratch", m.name, mdir)

        def fresh() -> None:
            _clear_member_dir(mdir)
            run.metrics_log.reset()

        on_main(ctx, fresh)
    return run


def _make_tracker(ctx: DistContext, cfg: TrainConfig, m: MemberConfig) -> Tracker:
    """Rank 0's tracker (Comet, when configured); the other processes log nothing."""
    made: list[Tracker] = []
    on_main(
        ctx, lambda: made.append(make_tracker(cfg.tracking, Path(cfg.run_dir), m.name, member_params(cfg, m)))
    )
    return made[0] if made else NullTracker()


def _build_model(
    ctx: DistContext, m: MemberConfig, num_classes: int, pretrained: bool | str | Path, seed: int
) -> nn.Module:
    """The member's network; under torchrun only rank 0 loads ImageNet weights (the others receive them)."""
    built: list[nn.Module] = []
    on_main(ctx, lambda: built.append(create_backbone(m.backbone, num_classes, pretrained, seed=seed)))
    return built[0] if built else create_backbone(m.backbone, num_classes, False, seed=seed)


MEMBER_FILES = (
    "best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.pt",
    "metrics.jsonl", "metrics.csv", "predictions/val.csv", "predictions/val.json",
    "predictions/test.csv", "predictions/test.json", "predictions/blend.csv", "predictions/blend.json",
)  # fmt: skip


def _clear_member_dir(mdir: Path) -> None:
    """Remove a previous run's files so that a crash cannot leave old and new results mixed."""
    for name in MEMBER_FILES:
        (mdir / name).unlink(missing_ok=True)


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


@dataclass(frozen=True)
class ResumeBook:
    """What rank 0 reads from a member's folder to continue it (sent to the other processes)."""

    epoch: int  # the last completed epoch
    stopped_early: bool
    step: int
    early_stopping: dict[str, Any]
    bad_train: tuple[str, ...]
    state: dict[str, Any] | None  # optimiser / scheduler / RNG; None once the member finished


def _read_resume(run: MemberRun) -> ResumeBook:
    """Check the ``last`` checkpoint fits the config, load its weights into the model, read the state."""
    info = read_checkpoint_info(run.member_dir, "last")
    expect = (resolve_timm_name(run.member.backbone), tuple(run.manifest.classes), run.member.spec)
    found = (info.timm_name, info.classes, info.preprocess)
    digest = info.extra.get("manifest_digest")
    if digest != run.manifest.digest():
        raise CheckpointError(
            f"cannot resume {run.member.name}: its last checkpoint was trained on manifest {digest}, the "
            f"config's manifest is {run.manifest.digest()} (another split or data set)",
            hint="use another run_dir, or --set train.resume=false to train from scratch",
            path=run.member_dir,
        )
    if expect != found:
        raise CheckpointError(
            f"cannot resume {run.member.name}: its last checkpoint is {found[0]} for classes {found[1]} at "
            f"{found[2].input_size}, the config asks for {expect[0]} for {expect[1]} at {expect[2].input_size}",
            hint="use another run_dir, or --set train.resume=false to train from scratch",
            path=run.member_dir,
        )
    load_state(run.model, load_weights(run.member_dir, "last", info), run.member_dir / "last.safetensors")
    book = info.extra
    if "early_stopping" not in book:
        raise CheckpointError(
            f"cannot resume {run.member.name}: {run.member_dir / 'last.json'} lacks the training state",
            hint="use another run_dir, or --set train.resume=false to train from scratch",
            path=run.member_dir,
        )
    run.metrics_log.reset(keep_through_epoch=info.epoch)
    stopped = bool(book.get("stopped_early", False))
    finished = info.epoch + 1 >= run.train.epochs or stopped
    state = None
    if not finished and (run.member_dir / RESUME_STATE).is_file():
        state = load_resume_state(run.member_dir)
    return ResumeBook(
        epoch=info.epoch,
        stopped_early=stopped,
        step=int(book.get("step", 0)),
        early_stopping=dict(book["early_stopping"]),
        bad_train=tuple(str(p) for p in book.get("bad_train", [])),
        state=state,
    )


def _apply_resume(run: MemberRun, book: ResumeBook) -> None:
    """Continue after the last completed epoch: early stopping, optimiser, scheduler, RNG (every process)."""
    run.next_epoch = book.epoch + 1
    run.stopped_early = book.stopped_early
    run.resumed_step = book.step
    run.stopper = EarlyStopping.from_state(book.early_stopping)
    for path in book.bad_train:
        run.train_bad.paths[path] = "unreadable (before resume)"
    if run.next_epoch >= run.train.epochs or run.stopped_early:
        log.info(
            "%s finished training earlier (epoch %d); writing its predictions",
            run.member.name,
            book.epoch + 1,
        )
        return
    state = book.state
    if state is None:
        log.warning(
            "%s: no optimiser state (it is dropped when a member finishes); continuing after epoch %d with a "
            "fresh optimiser and schedule",
            run.member.name,
            book.epoch + 1,
        )
        return
    _restore_rng(run, state)
    phase = _phase_name(run.cfg, run.next_epoch)
    if phase == state["phase"]:
        current = _enter_phase(run, phase)
        current.optimizer.load_state_dict(state["optimizer"])
        current.scheduler.load_state_dict(state["scheduler"])
        current.step = int(state["step"])
        if current.scaler is not None and state.get("scaler"):
            current.scaler.load_state_dict(state["scaler"])
    log.info("resuming %s after epoch %d", run.member.name, book.epoch + 1)


def _rng_state(run: MemberRun) -> dict[str, torch.Tensor | None]:
    """This process's RNG states: the CPU's and, on a GPU, the CUDA device's (GPU dropout draws there)."""
    cuda = run.setup.device.type == "cuda"
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.setup.device) if cuda else None,
    }


def _restore_rng(run: MemberRun, state: dict[str, Any]) -> None:
    """Each process continues its own dropout RNG streams (saved per process)."""
    per_rank = state.get("rng_ranks")
    if isinstance(per_rank, list | tuple) and len(per_rank) == run.ctx.world_size:
        mine = per_rank[run.ctx.rank]
    elif run.ctx.is_main:
        mine = {"cpu": state["rng"], "cuda": state.get("cuda_rng")}
        if per_rank is not None:
            log.warning(
                "%s was trained by %d processes and resumes with %d: the global batches and their order "
                "stay the same, the other processes' dropout masks do not",
                run.member.name,
                len(per_rank),
                run.ctx.world_size,
            )
    else:
        return
    torch.set_rng_state(mine["cpu"])
    if mine.get("cuda") is not None and run.setup.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], run.setup.device)


def _phase_name(cfg: TrainConfig, epoch: int) -> str:
    return "adapt" if epoch < cfg.train.adapt_epochs else "finetune"


def _train_loader(run: MemberRun, epoch: int) -> DataLoader[Any]:
    return make_loader(
        run.train_set,
        batch_size=run.cfg.batch_size(run.member),
        shuffle=True,
        num_workers=run.cfg.data.num_workers,
        pin_memory=run.setup.pin_memory,
        generator=epoch_generator(run.seed, epoch),
        shard=run.shard,
    )


def _enter_phase(run: MemberRun, phase: str) -> PhaseState:
    """Freeze or unfreeze, and give the phase its own optimiser and restarting cosine schedule."""
    settings = run.cfg.train
    params = set_phase(run.model, phase)
    lr = run.cfg.learning_rate(run.member, phase)
    optimizer = make_optimizer(params, settings, lr)
    scheduler = make_scheduler(optimizer, settings.scheduler, max(1, len(_train_loader(run, 0))))
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


# ---------------------------------------------------------------------------------------------------------
# The epochs
# ---------------------------------------------------------------------------------------------------------


def _run_epochs(run: MemberRun) -> None:
    total = run.train.epochs
    while run.next_epoch < total and not run.stopped_early:
        epoch = run.next_epoch
        phase = _phase_name(run.cfg, epoch)
        current = run.phase if run.phase is not None and phase == run.phase_name else _enter_phase(run, phase)
        stats = _train_one_epoch(run, current, epoch, phase)
        val = _validate(run, epoch)
        improved = run.stopper.update(float(val[run.stopper.metric]), epoch)
        more = epoch + 1 < run.train.epochs
        run.stopped_early = phase == "finetune" and run.stopper.should_stop and more
        _record_epoch(run, epoch, phase, stats, val, improved)
        run.next_epoch = epoch + 1
        _save_epoch(run, current, epoch, phase, val, improved)

    def check() -> None:
        if run.best_info is None and not (run.member_dir / "best.json").is_file():
            raise CheckpointError(f"{run.member.name}: no epoch was trained, so there is no best checkpoint")

    on_main(run.ctx, check)


def _train_one_epoch(run: MemberRun, current: PhaseState, epoch: int, phase: str) -> EpochStats:
    # frozen BatchNorm keeps ImageNet statistics: random-init members need their batch statistics
    frozen = run.cfg.train.finetune_frozen_norm and run.member.pretrained is not False
    train_mode(run.model, phase, frozen_norm=frozen)
    run.train_set.set_epoch(epoch)
    loader = _train_loader(run, epoch)
    desc = f"{run.member.name} {phase} {epoch + 1}/{run.train.epochs}"
    progress = Progress(len(loader), desc, run.progress_stream)
    tracker = run.tracker

    def on_step(step: int, loss: float, lr: float) -> None:
        tracker.log_metrics({"lr": lr, "train_loss_step": loss}, step=step, epoch=epoch)

    stats = train_epoch(current, loader, run.train_bad, progress, on_step)
    progress.close()
    if not run.ctx.enabled:
        return stats
    _merge_bad(run, run.train_bad)
    if stats.skipped_steps:
        log.warning(
            "%s epoch %d: %d step(s) skipped because a process had no readable image in its share",
            run.member.name,
            epoch + 1,
            stats.skipped_steps,
        )
    return merge_epoch_stats(stats, current.all_reduce, run.setup.device)


def _merge_bad(run: MemberRun, bad: BadImages) -> None:
    """Every process learns the unreadable images the others met (and all apply the same limit)."""
    for paths in all_gather_object(run.ctx, dict(bad.paths)):
        bad.merge(paths)


def _gather(run: MemberRun, preds: Predictions) -> Predictions:
    return concat_predictions(all_gather_object(run.ctx, preds))


def _validate(run: MemberRun, epoch: int) -> dict[str, Any]:
    """Validation metrics, the same on every process (computed on rank 0 from all processes' parts)."""
    sync_module(run.ctx, run.model, buffers_only=True)  # evaluate rank 0's model (the one saved)
    loader = make_loader(
        run.val_set,
        batch_size=run.cfg.train.eval_batch_size,
        shuffle=False,
        num_workers=run.cfg.data.num_workers,
        pin_memory=run.setup.pin_memory,
        shard=run.shard,
    )
    start = time.perf_counter()
    progress = Progress(len(loader), f"{run.member.name} val {epoch + 1}", run.progress_stream)
    preds = predict_batches(
        run.model, loader, run.setup, class_weights=run.weights, bad=run.val_bad, progress=progress
    )
    if run.ctx.enabled:
        preds = _gather(run, preds)
        _merge_bad(run, run.val_bad)

    def compute() -> dict[str, Any]:
        metrics = metrics_record(preds.labels, preds.probs, tuple(run.manifest.classes), preds.loss)
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        return metrics

    metrics = on_main(run.ctx, compute)
    progress.close(loss=metrics["loss"], acc=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    return metrics


def _record_epoch(
    run: MemberRun, epoch: int, phase: str, stats: EpochStats, val: dict[str, Any], improved: bool
) -> None:
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


def _checkpoint_info(
    run: MemberRun, current: PhaseState, epoch: int, phase: str, val: dict[str, Any]
) -> CheckpointInfo:
    return CheckpointInfo(
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
            "early_stopping": run.stopper.state_dict(),
            "bad_train": sorted(run.train_bad.paths),
            **run.provenance,
        },
    )


def _save_epoch(
    run: MemberRun, current: PhaseState, epoch: int, phase: str, val: dict[str, Any], improved: bool
) -> None:
    info = _checkpoint_info(run, current, epoch, phase, val)
    rng_ranks = all_gather_object(run.ctx, _rng_state(run)) if run.ctx.enabled else None

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
            "cuda_rng": _rng_state(run)["cuda"],
        }
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        save_resume_state(run.member_dir, state)
        return best

    best = on_main(run.ctx, write)
    if best is not None:
        run.best_info = best


# ---------------------------------------------------------------------------------------------------------
# After training
# ---------------------------------------------------------------------------------------------------------


def _write_member_predictions(run: MemberRun) -> dict[str, Path]:
    """The best checkpoint's probabilities for every val and test image (the stacking stage's input)."""

    def load_best() -> CheckpointInfo:
        info = read_checkpoint_info(run.member_dir, "best")
        if (
            run.best_info is None
            or run.best_info.sha256 != info.sha256
            or run.stopper.best_epoch != run.next_epoch - 1
        ):
            # the model in memory is not the best epoch's: load the best weights (hash-checked)
            path = run.member_dir / "best.safetensors"
            load_state(run.model, load_weights(run.member_dir, "best", info), path)
        return info

    info = on_main(run.ctx, load_best)
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
            shard=run.shard,
            gather=partial(_gather, run) if run.ctx.enabled else None,
            via=via,
        )
        out[split] = on_main(run.ctx, partial(write_predictions, table, run.member_dir / "predictions"))
    run.best_info = info
    return out
