"""Takes a training run with members/<name> checkpoints; makes the study's PyTorch rows (``torch_eager``):
the members as PyTorch modules in sequence, FP32 eager as trained (mode ``eager``), then "PyTorch best", the
same modules at their best on this CPU (mode ``best``), with its top-1 agreement with FP32 eager.

What "best" is, and why:
- ``channels_last`` memory format for modules and inputs (oneDNN's convolutions prefer NHWC), always;
- bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``) only where the CPU computes bf16 in hardware:
  the ``avx512_bf16`` or ``amx_bf16`` flag in /proc/cpuinfo and oneDNN's own bf16 check. Elsewhere torch
  emulates bf16, slower than FP32, so "best" is channels_last FP32 and the row's warning says why;
- ``torch.inference_mode`` and eval mode, as in the FP32 reference;
- no ``torch.compile``: measured on this project's 2-core AMD EPYC (AVX512-BF16), a 3-convolution toy model
  at 64 px, batch 8: inductor took 26 s to compile for 1.6x (3.3 -> 2.0 ms per call, bf16 channels_last).
  The paper members are ~100x larger graphs (minutes of compilation each, again for each new batch size)
  and a cxr-bench row makes ~10 timed calls, so compilation would dominate the run; it does not pay off.
Only the CPU gets a best row (on CUDA, the FP32 row is the reference). The modules run in
``torch_reference`` (beside it), imported only when torch is installed (a note says when it is not).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench.inputs import ModelFile
from cxr.bench.machine import PeakMemoryProbe
from cxr.bench.measure import BenchContext, BenchInputs, cycled, guarded, make_row, measure
from cxr.bench.run import Reference
from cxr.bench.types import BenchRow

log = logging.getLogger(__name__)

NO_TORCH = "PyTorch eager reference skipped: torch is not installed (pip install 'cxr-toolkit[train]')"
REFERENCE_MODULE = "torch_reference"


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU flags (``/proc/cpuinfo`` text) name bf16 in hardware: AVX512-BF16 or AMX-BF16."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


@dataclass(frozen=True)
class BestMode:
    bf16: bool
    note: str  # what "best" means on this machine, for the row's warnings


def best_mode() -> BestMode:
    """channels_last, plus bf16 autocast when this CPU and torch's oneDNN both have bf16."""
    ref = importlib.import_module(REFERENCE_MODULE)
    version = ref.torch_version()
    if not cpu_flags_bf16():
        why = "no avx512_bf16 / amx_bf16 CPU flag: torch would emulate bf16, slower than FP32"
    elif not ref.onednn_bf16():
        why = "torch's oneDNN reports no bf16 support"
    else:
        return BestMode(True, f"PyTorch best: channels_last + bf16 autocast, torch {version}")
    return BestMode(False, f"PyTorch best: channels_last FP32 ({why}), torch {version}")


def worst_member_agreement(reference: np.ndarray, best: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Top-1 agreement of the worst member (best mode vs FP32 eager), with each member's figure."""
    each = {str(n): float(np.mean(best[i] == reference[i])) for i, n in enumerate(names)}
    return {
        "top1": min(each.values()) if each else 1.0,
        "images": int(reference.shape[1]),
        "reference": "PyTorch FP32 eager, each member (worst member)",
        "members": each,
    }


def bench_torch(
    ctx: BenchContext,
    main: ModelFile,
    run_dir: Path,
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    grays: Sequence[np.ndarray] | None = None,
    best: bool = True,
) -> None:
    """The members as PyTorch modules from ``run_dir``: FP32 eager, then PyTorch best on the CPU (both
    skipped, with a note, without torch or checkpoints)."""
    names = main.member_order or ((main.member_name,) if main.member_name else ())
    if not names:
        ctx.notes.append(f"PyTorch eager reference skipped: {main.name} names no members in its metadata")
        return
    if not torch_installed():
        ctx.notes.append(NO_TORCH)
        log.warning("%s", NO_TORCH)
        return
    ref = importlib.import_module(REFERENCE_MODULE)
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
        if best and device == "cpu":
            _torch_best(ctx, probe, inputs, members, what, row, grays)
        elif best:
            ctx.notes.append(f"PyTorch best is measured on the CPU only (not on {device})")
        del members


def _torch_best(
    ctx: BenchContext,
    probe: PeakMemoryProbe,
    inputs: BenchInputs,
    members: Any,
    what: str,
    row: Callable[..., BenchRow],
    grays: Sequence[np.ndarray] | None,
) -> None:
    """channels_last (+ bf16 autocast where the CPU has it) rows, with their agreement with FP32 eager."""
    ref = importlib.import_module(REFERENCE_MODULE)
    mode = best_mode()
    plain = None if grays is None else ref.member_top1(members, grays, channels_last=False, bf16=False)
    ref.to_channels_last(members)
    agreement = None
    if grays is not None and plain is not None and mode.bf16:
        labels = ref.member_top1(members, grays, channels_last=True, bf16=True)
        agreement = worst_member_agreement(plain, labels, members.names)
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


def torch_reference(run_dir: Path, grays: Sequence[np.ndarray] | None = None, best: bool = True) -> Reference:
    """The PyTorch rows of the members in ``run_dir`` as a run reference (``grays``: agreement images)."""

    def add(ctx: BenchContext, main: ModelFile, inputs: BenchInputs, probe: PeakMemoryProbe) -> None:
        bench_torch(ctx, main, run_dir, inputs, probe, grays, best)

    return add
