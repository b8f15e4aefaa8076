"""Starting a member: takes its config, the manifest and the device, makes a ready ``MemberRun``.

Builds the network (rank 0 loads ImageNet or resumed weights, the others receive them), the class weights,
the data sets, early stopping, metrics log and tracker; then either resumes from the member's ``last``
checkpoint (``cxr.train.resume``) or clears its folder for a fresh start.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from cxr.data.manifest import Manifest
from cxr.data.weights import class_weights
from cxr.errors import ConfigError
from cxr.train.backbones import create_backbone, finetune_start, resolve_timm_name
from cxr.train.config import MemberConfig, TrainConfig
from cxr.train.dataset import BadImages, make_dataset, train_counts
from cxr.train.device import DeviceSetup
from cxr.train.distributed import SINGLE, DistContext, convert_sync_batchnorm, on_main, sync_module
from cxr.train.early_stopping import EarlyStopping
from cxr.train.member_run import MemberRun, member_dir, member_params
from cxr.train.provenance import dataset_provenance, weights_provenance
from cxr.train.resume import apply_resume, read_resume
from cxr.train.tracking import MetricsLog, NullTracker, Tracker, make_tracker

log = logging.getLogger(__name__)

MEMBER_FILES = (
    "best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.pt",
    "metrics.jsonl", "metrics.csv", "predictions/val.csv", "predictions/val.json",
    "predictions/test.csv", "predictions/test.json", "predictions/blend.csv", "predictions/blend.json",
)  # fmt: skip


def start_run(
    cfg: TrainConfig,
    m: MemberConfig,
    manifest: Manifest,
    setup: DeviceSetup,
    progress_stream: TextIO | None,
    seed: int,
    ctx: DistContext = SINGLE,
) -> MemberRun:
    """The member's run, resumed from its ``last`` checkpoint when ``train.resume`` finds one."""
    mdir = member_dir(cfg, m.name)

    def look() -> bool:
        mdir.mkdir(parents=True, exist_ok=True)
        return cfg.train.resume and (mdir / "last.json").is_file()

    resume = on_main(ctx, look)
    model = _place_model(ctx, cfg, m, setup, len(manifest.classes), False if resume else m.pretrained, seed)
    run = _new_run(cfg, m, manifest, setup, model, progress_stream, seed, ctx)
    if resume:
        book = on_main(ctx, partial(read_resume, run))
        sync_module(ctx, run.model)
        apply_resume(run, book)
    else:
        _start_fresh(run)
    return run


def _place_model(
    ctx: DistContext,
    cfg: TrainConfig,
    m: MemberConfig,
    setup: DeviceSetup,
    num_classes: int,
    pretrained: bool | str | Path,
    seed: int,
) -> nn.Module:
    """The member's network on its device and memory format, with rank 0's weights in every process."""
    model = _build_model(ctx, m, num_classes, pretrained, seed)
    try:  # a wrong module name fails now, not after the adaptation epochs
        finetune_start(model, m.finetune_from)
    except ConfigError as e:
        raise ConfigError(f"models.{m.name}.{e.message}", hint=e.hint) from None
    model = convert_sync_batchnorm(ctx, model, setup.device, cfg.train.sync_batchnorm)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    sync_module(ctx, model)  # rank 0's weights (ImageNet or resumed) everywhere
    return model


def _build_model(
    ctx: DistContext, m: MemberConfig, num_classes: int, pretrained: bool | str | Path, seed: int
) -> nn.Module:
    """The member's network; under torchrun only rank 0 loads ImageNet weights (the others receive them)."""
    built: list[nn.Module] = []
    on_main(ctx, lambda: built.append(create_backbone(m.backbone, num_classes, pretrained, seed=seed)))
    return built[0] if built else create_backbone(m.backbone, num_classes, False, seed=seed)


def _loss_weights(cfg: TrainConfig, manifest: Manifest, setup: DeviceSetup) -> torch.Tensor | None:
    """The loss's class weights from the train split's counts (None when ``train.class_weights`` is off)."""
    if not cfg.train.class_weights:
        return None
    classes = tuple(manifest.classes)
    counts = train_counts(manifest)
    weights = torch.tensor(class_weights(counts, classes, cfg.train.class_weight_cap), dtype=torch.float32)
    weights = weights.to(setup.device)
    log.info("class weights %s", dict(zip(classes, (round(float(w), 4) for w in weights), strict=True)))
    return weights


def _new_run(
    cfg: TrainConfig,
    m: MemberConfig,
    manifest: Manifest,
    setup: DeviceSetup,
    model: nn.Module,
    progress_stream: TextIO | None,
    seed: int,
    ctx: DistContext,
) -> MemberRun:
    """A run at epoch 0: class weights, data sets, early stopping, metrics log, tracker, provenance."""
    mdir = member_dir(cfg, m.name)
    es = cfg.train.early_stopping
    weights = _loss_weights(cfg, manifest, setup)
    train_set = make_dataset(manifest, "train", m.spec, train=True, seed=seed)
    val_set = make_dataset(manifest, "val", m.spec, train=False)
    return MemberRun(
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


def _make_tracker(ctx: DistContext, cfg: TrainConfig, m: MemberConfig) -> Tracker:
    """Rank 0's tracker (Comet, when configured); the other processes log nothing."""
    made: list[Tracker] = []
    on_main(
        ctx, lambda: made.append(make_tracker(cfg.tracking, Path(cfg.run_dir), m.name, member_params(cfg, m)))
    )
    return made[0] if made else NullTracker()


def _start_fresh(run: MemberRun) -> None:
    """Train from scratch: remove a previous run's files (on rank 0) so old and new results never mix."""
    if run.cfg.train.resume:
        log.info(
            "%s: no checkpoint in %s to resume from; training from scratch", run.member.name, run.member_dir
        )

    def fresh() -> None:
        _clear_member_dir(run.member_dir)
        run.metrics_log.reset()

    on_main(run.ctx, fresh)


def _clear_member_dir(mdir: Path) -> None:
    """Remove a previous run's files so that a crash cannot leave old and new results mixed."""
    for name in MEMBER_FILES:
        (mdir / name).unlink(missing_ok=True)
