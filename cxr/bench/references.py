"""Takes a fused model and its members or training run; makes the separate-sessions and PyTorch eager rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cxr.bench import eager
from cxr.bench.inputs import ModelFile
from cxr.bench.machine import PeakMemoryProbe
from cxr.bench.measure import BenchContext, BenchInputs, cycled, guarded, make_row, measure, open_predictor
from cxr.runtime.predictor import Predictor

log = logging.getLogger(__name__)


def _sequence_call(predictors: Sequence[Predictor], xs: Sequence[np.ndarray]) -> Callable[[], None]:
    """One call = every member's session run on its own pre-normalised input, in sequence."""

    def call() -> None:
        for p, x in zip(predictors, xs, strict=True):
            p.run(x)

    return call


def bench_members(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
) -> None:
    """The members of ``main`` run one after another in their own sessions: the fused graph's reference."""
    cfg = ctx.cfg
    flops_each = [m.flops_per_image for m in members]
    flops = (
        sum(f for f in flops_each if f is not None)
        if all(f is not None for f in flops_each)
        else main.flops_per_image
    )
    for provider in cfg.providers:
        for threads in cfg.threads:
            opened = [open_predictor(m.path, provider, threads, cfg.strict_provider) for m in members]
            predictors = [p for p, _ in opened]
            used = predictors[0].info.providers
            warnings = tuple(w for p in predictors for w in p.info.warnings)
            for batch in cfg.batch_sizes:
                grays = cycled(inputs.grays, batch)
                xs = [p.prepare(grays) for p in predictors]
                call = _sequence_call(predictors, xs)
                timed, mem = measure(probe, [guarded(call, f"members of {main.name}", batch)], cfg.plan)
                ctx.add(
                    make_row(
                        ctx,
                        kind="members_separate",
                        model=main.name,
                        model_kind=main.kind,
                        precision=main.precision,
                        provider_requested=provider,
                        providers_used=used,
                        batch=batch,
                        threads=threads,
                        concurrency=1,
                        mode="session",
                        sessions=len(predictors),
                        timed=timed,
                        memory=mem,
                        create_s=sum(s for _, s in opened),
                        flops=flops,
                        sha=main.sha256[:16],
                        warnings=warnings,
                    )
                )
            del opened, predictors


def bench_torch(
    ctx: BenchContext, main: ModelFile, run_dir: Path, inputs: BenchInputs, probe: PeakMemoryProbe
) -> None:
    """The members as PyTorch eager models from ``run_dir`` (skipped, with a note, without torch)."""
    cfg = ctx.cfg
    names = main.member_order or ((main.member_name,) if main.member_name else ())
    if not names:
        ctx.notes.append(f"PyTorch eager reference skipped: {main.name} names no members in its metadata")
        return
    if not eager.torch_installed():
        ctx.notes.append(eager.NO_TORCH)
        log.warning("%s", eager.NO_TORCH)
        return
    ref = eager.reference()
    devices = sorted({ref.resolve_device(p) for p in cfg.providers})
    for device in devices:
        reason = ref.unavailable_reason(run_dir, names, device)
        if reason is not None:
            ctx.notes.append(reason)
            log.warning("%s", reason)
            continue
        members = ref.load_members(run_dir, names, device)
        for threads in cfg.threads:
            for batch in cfg.batch_sizes:
                call, restore = ref.members_call(members, cycled(inputs.grays, batch), threads)
                try:
                    timed, mem = measure(
                        probe, [guarded(call, f"PyTorch members from {run_dir}", batch)], cfg.plan
                    )
                finally:
                    restore()
                ctx.add(
                    make_row(
                        ctx,
                        kind="torch_eager",
                        model=main.name,
                        model_kind=main.kind,
                        precision="fp32",
                        provider_requested=device,
                        providers_used=(device,),
                        batch=batch,
                        threads=threads,
                        concurrency=1,
                        mode="eager",
                        sessions=len(names),
                        timed=timed,
                        memory=mem,
                        create_s=members.load_seconds,
                        flops=main.flops_per_image,
                        warnings=(f"torch {members.torch_version}",),
                    )
                )
        del members
