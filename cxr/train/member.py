"""One member's run: its ``MemberRun`` state (fresh or resumed), folder, seed and phases."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr.data.manifest import Manifest
from cxr.data.weights import class_weights
from cxr.errors import CheckpointError, ConfigError
from cxr.train.backbones import create_backbone, finetune_start, resolve_timm_name, set_phase
from cxr.train.checkpoint import (
    RESUME_STATE,
    CheckpointInfo,
    dataset_provenance,
    load_resume_state,
    load_weights,
    read_checkpoint_info,
    weights_provenance,
)
from cxr.train.config import MemberConfig, TrainConfig, TrainSettings, config_to_dict
from cxr.train.dataset import BadImages, ManifestDataset, epoch_generator, make_dataset, make_loader
from cxr.train.distributed import (
    SINGLE,
    DeviceSetup,
    DistContext,
    all_reduce_sum,
    convert_sync_batchnorm,
    on_main,
    restore_rng,
    sync_module,
    wrap_ddp,
)
from cxr.train.loop import EarlyStopping, PhaseState, make_optimizer, make_scheduler
from cxr.train.tracking import CometTracker, MetricsLog, Tracker

log = logging.getLogger(__name__)

MEMBER_FILES = (
    "best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.pt",
    "metrics.jsonl", "metrics.csv", "predictions/val.csv", "predictions/val.json",
    "predictions/test.csv", "predictions/test.json", "predictions/blend.csv", "predictions/blend.json"
)  # fmt: skip
FRESH_START_HINT = "use another run_dir, or --set train.resume=false to train from scratch"


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
    provenance: dict[str, Any] = field(default_factory=dict)  # "pretrained" and "dataset"

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


def start_run(
    cfg: TrainConfig,
    m: MemberConfig,
    manifest: Manifest,
    setup: DeviceSetup,
    progress_stream: TextIO | None,
    seed: int,
    ctx: DistContext = SINGLE,
) -> MemberRun:
    """The member's run: the network on its device (rank 0's weights everywhere), class weights, data sets,
    early stopping, metrics log, tracker and provenance; resumed from its ``last`` checkpoint when
    ``train.resume`` finds one, else at epoch 0."""
    mdir = member_dir(cfg, m.name)

    def look() -> bool:
        mdir.mkdir(parents=True, exist_ok=True)
        return cfg.train.resume and (mdir / "last.json").is_file()

    resume = on_main(ctx, look)
    num_classes = len(manifest.classes)
    pretrained = False if resume else m.pretrained
    model: nn.Module = _on_main_or(
        ctx,
        lambda: create_backbone(m.backbone, num_classes, pretrained, seed=seed),
        lambda: create_backbone(m.backbone, num_classes, False, seed=seed),
    )
    try:  # a wrong module name fails now, not after the adaptation epochs
        finetune_start(model, m.finetune_from)
    except ConfigError as e:
        raise ConfigError(f"models.{m.name}.{e.message}", hint=e.hint) from None
    model = convert_sync_batchnorm(ctx, model, setup.device, cfg.train.sync_batchnorm)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    sync_module(ctx, model)  # rank 0's weights (ImageNet or resumed) everywhere
    es = cfg.train.early_stopping
    comet = partial(CometTracker, cfg.tracking, Path(cfg.run_dir), m.name, member_params(cfg, m))
    train_set = make_dataset(manifest, "train", m.spec, train=True, seed=seed)
    val_set = make_dataset(manifest, "val", m.spec, train=False)
    run = MemberRun(
        cfg=cfg,
        member=m,
        member_dir=mdir,
        manifest=manifest,
        setup=setup,
        model=model,
        weights=_loss_weights(cfg, manifest, setup),
        stopper=EarlyStopping(es.metric, es.mode, es.patience, es.min_delta),
        metrics_log=MetricsLog(mdir),
        tracker=_on_main_or(ctx, comet if cfg.tracking.comet else Tracker, Tracker),  # the others log nothing
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
        info, state = on_main(ctx, partial(read_resume, run))
        sync_module(ctx, run.model)
        apply_resume(run, info, state)
        return run
    if cfg.train.resume:
        log.info("%s: no checkpoint in %s to resume from; training from scratch", m.name, mdir)

    def fresh() -> None:  # a previous run's files go, so that old and new results never mix
        for name in MEMBER_FILES:
            (mdir / name).unlink(missing_ok=True)
        run.metrics_log.reset()

    on_main(ctx, fresh)
    return run


def _on_main_or(ctx: DistContext, make: Any, other: Any) -> Any:
    """``make()`` on rank 0, ``other()`` on the other processes (nothing is sent between them)."""
    made: list[Any] = []
    on_main(ctx, lambda: made.append(make()))
    return made[0] if made else other()


def _loss_weights(cfg: TrainConfig, manifest: Manifest, setup: DeviceSetup) -> torch.Tensor | None:
    """The loss's class weights from the train split's counts (None when ``train.class_weights`` is off)."""
    if not cfg.train.class_weights:
        return None
    classes = tuple(manifest.classes)
    counts = manifest.counts()["train"]
    cap = cfg.train.class_weight_cap
    weights = torch.tensor(class_weights(counts, classes, cap), dtype=torch.float32, device=setup.device)
    log.info("class weights %s", dict(zip(classes, (round(float(w), 4) for w in weights), strict=True)))
    return weights


def phase_name(cfg: TrainConfig, epoch: int) -> str:
    """``adapt`` (the new head learns, the backbone is frozen) for the first epochs, then ``finetune``."""
    return "adapt" if epoch < cfg.train.adapt_epochs else "finetune"


def train_loader(run: MemberRun, epoch: int) -> DataLoader[Any]:
    return make_loader(
        run.train_set,
        batch_size=run.cfg.batch_size(run.member),
        shuffle=True,
        num_workers=run.cfg.data.num_workers,
        pin_memory=run.setup.pin_memory,
        generator=epoch_generator(run.seed, epoch),
        shard=run.ctx,
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


def read_resume(run: MemberRun) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """Rank 0: check the ``last`` checkpoint fits the config, load its weights into the model, read the
    state (optimiser, scheduler, RNG; None once the member finished) that every process continues from."""
    info = read_checkpoint_info(run.member_dir, "last")
    _check_resumable(run, info)
    load_weights(run.model, run.member_dir, "last", info)
    if "early_stopping" not in info.extra:
        raise CheckpointError(
            f"cannot resume {run.member.name}: {run.member_dir / 'last.json'} lacks the training state",
            hint=FRESH_START_HINT,
            path=run.member_dir,
        )
    run.metrics_log.reset(keep_through_epoch=info.epoch)
    finished = info.epoch + 1 >= run.train.epochs or bool(info.extra.get("stopped_early", False))
    if not finished and (run.member_dir / RESUME_STATE).is_file():
        return info, load_resume_state(run.member_dir)
    return info, None


def _check_resumable(run: MemberRun, info: CheckpointInfo) -> None:
    """Refuse a checkpoint trained on another manifest, backbone, class list or input size."""
    expect = (resolve_timm_name(run.member.backbone), tuple(run.manifest.classes), run.member.spec)
    found = (info.timm_name, info.classes, info.preprocess)
    digest = info.extra.get("manifest_digest")
    if digest != run.manifest.digest():
        raise CheckpointError(
            f"cannot resume {run.member.name}: its last checkpoint was trained on manifest {digest}, the "
            f"config's manifest is {run.manifest.digest()} (another split or data set)",
            hint=FRESH_START_HINT,
            path=run.member_dir,
        )
    if expect != found:
        raise CheckpointError(
            f"cannot resume {run.member.name}: its last checkpoint is {found[0]} for classes {found[1]} at "
            f"{found[2].input_size}, the config asks for {expect[0]} for {expect[1]} at {expect[2].input_size}",
            hint=FRESH_START_HINT,
            path=run.member_dir,
        )


def apply_resume(run: MemberRun, info: CheckpointInfo, state: dict[str, Any] | None) -> None:
    """Continue after the last completed epoch: early stopping, optimiser, scheduler, RNG (every process)."""
    run.next_epoch = info.epoch + 1
    run.stopped_early = bool(info.extra.get("stopped_early", False))
    run.resumed_step = int(info.extra.get("step", 0))
    run.stopper = EarlyStopping(**info.extra["early_stopping"])
    for path in info.extra.get("bad_train", []):
        run.train_bad.paths[str(path)] = "unreadable (before resume)"
    if run.next_epoch >= run.train.epochs or run.stopped_early:
        log.info(
            "%s finished training earlier (epoch %d); writing its predictions",
            run.member.name,
            info.epoch + 1,
        )
        return
    if state is None:
        log.warning(
            "%s: no optimiser state (it is dropped when a member finishes); continuing after epoch %d with a "
            "fresh optimiser and schedule",
            run.member.name,
            info.epoch + 1,
        )
        return
    restore_rng(run.setup, run.ctx, state, run.member.name)
    phase = phase_name(run.cfg, run.next_epoch)
    if phase == state["phase"]:  # re-enter the interrupted phase; a new phase starts fresh
        current = enter_phase(run, phase)
        current.optimizer.load_state_dict(state["optimizer"])
        current.scheduler.load_state_dict(state["scheduler"])
        current.step = int(state["step"])
        if current.scaler is not None and state.get("scaler"):
            current.scaler.load_state_dict(state["scaler"])
    log.info("resuming %s after epoch %d", run.member.name, info.epoch + 1)
