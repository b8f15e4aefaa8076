"""Takes the PyTorch members ``cxr.train.torch_reference`` loaded; makes "PyTorch best": the same modules at
their best on this CPU, to set beside the FP32 eager reference.

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
Only the CPU gets a best row (on CUDA, torch_reference's FP32 row is the reference). torch is imported
inside the functions; ``cxr.bench.references`` calls them only when ``eager.torch_installed()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.imaging.preprocess import to_model_input

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BATCH = 8  # images per forward pass in the agreement check


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
    import torch

    if not cpu_flags_bf16():
        why = "no avx512_bf16 / amx_bf16 CPU flag: torch would emulate bf16, slower than FP32"
    elif not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        why = "torch's oneDNN reports no bf16 support"
    else:
        return BestMode(True, f"PyTorch best: channels_last + bf16 autocast, torch {torch.__version__}")
    return BestMode(False, f"PyTorch best: channels_last FP32 ({why}), torch {torch.__version__}")


def to_channels_last(members: Any) -> None:
    """Convert the loaded modules to channels_last, in place (after the FP32 rows are measured)."""
    import torch

    for module in members.modules:
        module.to(memory_format=torch.channels_last)


def _inputs(members: Any, grays: Sequence[np.ndarray]) -> list[Any]:
    import torch

    return [
        torch.from_numpy(np.ascontiguousarray(to_model_input(grays, spec, normalized=True)))
        .to(members.device)
        .contiguous(memory_format=torch.channels_last)
        for spec in members.specs
    ]


def _autocast(bf16: bool) -> contextlib.AbstractContextManager[object]:
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def best_call(
    members: Any, grays: Sequence[np.ndarray], threads: int | None, mode: BestMode
) -> tuple[Callable[[], Mapping[str, float] | None], Callable[[], None]]:
    """A call running softmax(model(x)) for every member in the best mode, and the thread-count restore."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    inputs = _inputs(members, grays)

    def call() -> None:
        with torch.inference_mode(), _autocast(mode.bf16):
            for module, x in zip(members.modules, inputs, strict=True):
                torch.softmax(module(x).float(), dim=1)

    def restore() -> None:
        torch.set_num_threads(previous)

    return call, restore


def member_top1(members: Any, grays: Sequence[np.ndarray], bf16: bool) -> np.ndarray:
    """Each member's top-1 class of every image, shape [members, images], as the modules are now."""
    import torch

    out = np.zeros((len(members.modules), len(grays)), np.int64)
    with torch.inference_mode(), _autocast(bf16):
        for start in range(0, len(grays), BATCH):
            xs = _inputs(members, grays[start : start + BATCH])
            for i, (module, x) in enumerate(zip(members.modules, xs, strict=True)):
                out[i, start : start + len(x)] = module(x).float().argmax(dim=1).cpu().numpy()
    return out


def worst_member_agreement(reference: np.ndarray, best: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Top-1 agreement of the worst member (best mode vs FP32 eager), with each member's figure."""
    each = {str(n): float(np.mean(best[i] == reference[i])) for i, n in enumerate(names)}
    return {
        "top1": min(each.values()) if each else 1.0,
        "images": int(reference.shape[1]),
        "reference": "PyTorch FP32 eager, each member (worst member)",
        "members": each,
    }
