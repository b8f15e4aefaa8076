"""Resuming a member: takes its folder's ``last`` checkpoint and resume state, makes the ``MemberRun`` continue.

Rank 0 checks the checkpoint fits the config and reads it (``read_resume`` -> ``ResumeBook``); every
process then continues after the last completed epoch (``apply_resume``): early stopping, optimiser,
scheduler and each process's RNG streams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from cxr.errors import CheckpointError
from cxr.train.backbones import resolve_timm_name
from cxr.train.checkpoint import (
    RESUME_STATE,
    CheckpointInfo,
    load_resume_state,
    load_state,
    load_weights,
    read_checkpoint_info,
)
from cxr.train.early_stopping import EarlyStopping
from cxr.train.member_run import MemberRun
from cxr.train.phases import enter_phase, phase_name

log = logging.getLogger(__name__)

FRESH_START_HINT = "use another run_dir, or --set train.resume=false to train from scratch"


@dataclass(frozen=True)
class ResumeBook:
    """What rank 0 reads from a member's folder to continue it (sent to the other processes)."""

    epoch: int  # the last completed epoch
    stopped_early: bool
    step: int
    early_stopping: dict[str, Any]
    bad_train: tuple[str, ...]
    state: dict[str, Any] | None  # optimiser / scheduler / RNG; None once the member finished


def read_resume(run: MemberRun) -> ResumeBook:
    """Check the ``last`` checkpoint fits the config, load its weights into the model, read the state."""
    info = read_checkpoint_info(run.member_dir, "last")
    _check_resumable(run, info)
    load_state(run.model, load_weights(run.member_dir, "last", info), run.member_dir / "last.safetensors")
    book = info.extra
    if "early_stopping" not in book:
        raise CheckpointError(
            f"cannot resume {run.member.name}: {run.member_dir / 'last.json'} lacks the training state",
            hint=FRESH_START_HINT,
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


def apply_resume(run: MemberRun, book: ResumeBook) -> None:
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
    restore_rng(run, state)
    _restore_phase(run, state)
    log.info("resuming %s after epoch %d", run.member.name, book.epoch + 1)


def _restore_phase(run: MemberRun, state: dict[str, Any]) -> None:
    """Re-enter the interrupted phase with its optimiser, scheduler and scaler (a new phase starts fresh)."""
    phase = phase_name(run.cfg, run.next_epoch)
    if phase != state["phase"]:
        return
    current = enter_phase(run, phase)
    current.optimizer.load_state_dict(state["optimizer"])
    current.scheduler.load_state_dict(state["scheduler"])
    current.step = int(state["step"])
    if current.scaler is not None and state.get("scaler"):
        current.scaler.load_state_dict(state["scaler"])


def rng_state(run: MemberRun) -> dict[str, torch.Tensor | None]:
    """This process's RNG states: the CPU's and, on a GPU, the CUDA device's (GPU dropout draws there)."""
    cuda = run.setup.device.type == "cuda"
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.setup.device) if cuda else None,
    }


def restore_rng(run: MemberRun, state: dict[str, Any]) -> None:
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
