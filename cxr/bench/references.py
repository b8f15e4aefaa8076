"""Takes a fused model and its members or training run; makes the separate-sessions and PyTorch rows.

Separate sessions: the members' own files, one session each, run in sequence, for every (provider,
precision) run and thread count of the fused model's rows. PyTorch: FP32 eager (``cxr.train.torch_reference``,
reached by name through ``cxr.bench.eager``), then "PyTorch best" on the CPU (``cxr.bench.torch_best``:
channels_last, bf16 autocast where the CPU has bf16), with the best mode's top-1 agreement with FP32 eager
when real images are given. torch is only imported by those two modules' functions.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench import eager, torch_best
from cxr.bench.inputs import ModelFile
from cxr.bench.machine import PeakMemoryProbe
from cxr.bench.measure import (
    BenchContext,
    BenchInputs,
    cycled,
    effective_precision,
    guarded,
    make_row,
    measure,
    open_predictor,
)
from cxr.bench.precision import AgreementCheck, Refusals
from cxr.bench.types import BenchRow
from cxr.runtime.predictor import Predictor

log = logging.getLogger(__name__)


def _sequence_call(predictors: Sequence[Predictor], xs: Sequence[np.ndarray]) -> Callable[[], None]:
    """One call = every member's session run on its own pre-normalised input, in sequence."""

    def call() -> None:
        for p, x in zip(predictors, xs, strict=True):
            p.run(x)

    return call


def _members_row(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    opened: Sequence[tuple[Predictor, float]],
    run: tuple[str, str],
) -> Callable[..., BenchRow]:
    """make_row with the fields every separate-sessions row of one (provider, precision) shares."""
    predictors = [p for p, _ in opened]
    flops_each = [m.flops_per_image for m in members]
    flops = (
        sum(f for f in flops_each if f is not None)
        if all(f is not None for f in flops_each)
        else main.flops_per_image
    )
    return functools.partial(
        make_row,
        ctx,
        kind="members_separate",
        model=main.name,
        model_kind=main.kind,
        precision=effective_precision(main.precision, predictors[0].info.precision),
        precision_requested=run[1],
        provider_requested=run[0],
        providers_used=predictors[0].info.providers,
        concurrency=1,
        mode="session",
        sessions=len(predictors),
        create_s=sum(s for _, s in opened),
        flops=flops,
        sha=main.sha256[:16],
        warnings=tuple(w for p in predictors for w in p.info.warnings),
    )


def bench_members(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    refused: Refusals,
) -> None:
    """The members of ``main`` run one after another in their own sessions: the fused graph's reference."""
    cfg = ctx.cfg
    for provider, precision in cfg.runs:
        if any((m.path, provider, precision) in refused for m in members):
            continue  # the note was written when the refusal was found
        for threads in cfg.threads:
            opened = [
                open_predictor(m.path, provider, threads, cfg.strict_provider, precision) for m in members
            ]
            row = _members_row(ctx, main, members, opened, (provider, precision))
            for batch in cfg.batch_sizes:
                grays = cycled(inputs.grays, batch)
                xs = [p.prepare(grays) for p, _ in opened]
                call = _sequence_call([p for p, _ in opened], xs)
                timed, mem = measure(probe, [guarded(call, f"members of {main.name}", batch)], cfg.plan)
                ctx.add(row(batch=batch, threads=threads, timed=timed, memory=mem))
            del opened


def bench_torch(
    ctx: BenchContext,
    main: ModelFile,
    run_dir: Path,
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    agree: AgreementCheck | None = None,
) -> None:
    """The members as PyTorch modules from ``run_dir``: FP32 eager, then PyTorch best on the CPU (both
    skipped, with a note, without torch or checkpoints)."""
    names = main.member_order or ((main.member_name,) if main.member_name else ())
    if not names:
        ctx.notes.append(f"PyTorch eager reference skipped: {main.name} names no members in its metadata")
        return
    if not eager.torch_installed():
        ctx.notes.append(eager.NO_TORCH)
        log.warning("%s", eager.NO_TORCH)
        return
    ref = eager.reference()
    for device in sorted({ref.resolve_device(p) for p in ctx.cfg.providers}):
        reason = ref.unavailable_reason(run_dir, names, device)
        if reason is not None:
            ctx.notes.append(reason)
            log.warning("%s", reason)
            continue
        members = ref.load_members(run_dir, names, device)
        row = functools.partial(
            make_row,
            ctx,
            kind="torch_eager",
            model=main.name,
            model_kind=main.kind,
            provider_requested=device,
            providers_used=(device,),
            concurrency=1,
            sessions=len(names),
            create_s=members.load_seconds,
            flops=main.flops_per_image,
        )
        what = f"PyTorch members from {run_dir}"
        fp32 = functools.partial(ref.members_call, members)
        _torch_rows(
            ctx,
            probe,
            inputs,
            fp32,
            what,
            row,
            precision="fp32",
            mode="eager",
            warnings=(f"torch {members.torch_version}",),
        )
        if ctx.cfg.torch_best and device == "cpu":
            _torch_best(ctx, probe, inputs, members, what, row, agree)
        elif ctx.cfg.torch_best:
            ctx.notes.append(f"PyTorch best is measured on the CPU only (not on {device})")
        del members


def _torch_best(
    ctx: BenchContext,
    probe: PeakMemoryProbe,
    inputs: BenchInputs,
    members: Any,
    what: str,
    row: Callable[..., BenchRow],
    agree: AgreementCheck | None,
) -> None:
    """channels_last (+ bf16 autocast where the CPU has it) rows, with their agreement with FP32 eager."""
    ref = eager.reference()
    mode = torch_best.best_mode()
    plain = None if agree is None else ref.member_top1(members, agree.grays, channels_last=False, bf16=False)
    ref.to_channels_last(members)
    agreement = None
    if agree is not None and plain is not None and mode.bf16:
        labels = ref.member_top1(members, agree.grays, channels_last=True, bf16=True)
        agreement = torch_best.worst_member_agreement(plain, labels, members.names)
    best = functools.partial(ref.members_call, members, channels_last=True, bf16=mode.bf16)
    precision = "bf16" if mode.bf16 else "fp32"
    _torch_rows(
        ctx,
        probe,
        inputs,
        best,
        what,
        row,
        precision=precision,
        mode="best",
        warnings=(mode.note,),
        agreement=agreement,
    )


def _torch_rows(
    ctx: BenchContext,
    probe: PeakMemoryProbe,
    inputs: BenchInputs,
    make_call: Callable[..., tuple[Callable[[], Any], Callable[[], None]]],
    what: str,
    row: Callable[..., BenchRow],
    **fields: Any,
) -> None:
    """One row per threads x batch size: ``make_call(grays, threads)`` gives the call and its restore."""
    cfg = ctx.cfg
    for threads in cfg.threads:
        for batch in cfg.batch_sizes:
            call, restore = make_call(cycled(inputs.grays, batch), threads)
            try:
                timed, mem = measure(probe, [guarded(call, what, batch)], cfg.plan)
            finally:
                restore()
            ctx.add(row(batch=batch, threads=threads, timed=timed, memory=mem, **fields))
