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
Only the CPU gets a best row (on CUDA, torch_reference's FP32 row is the reference). This module imports no
torch: the modules run in ``cxr.train.torch_reference`` (``members_call``/``member_top1`` with
``channels_last``/``bf16``), reached by name through ``cxr.bench.eager`` when ``eager.torch_installed()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench import eager

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
    ref = eager.reference()
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
