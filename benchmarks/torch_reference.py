"""The PyTorch eager reference of cxr-bench: the members' checkpoints run in sequence, in PyTorch.

Takes: a training run folder (``RUN_DIR/members/<name>`` checkpoints), the member names in ensemble order,
and pre-decoded gray images. Makes: a ready-to-time call (softmax(model(x)) for each member in sequence on
normalised float input; channels_last and bf16 autocast for cxr-bench's "PyTorch best") or a reason why the
reference cannot run (checkpoints missing, no CUDA). ``torch_rows`` imports it only when torch is installed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.imaging.preprocess import to_model_input
from cxr.train.checkpoint import load_checkpoint


@dataclass
class TorchMembers:
    """Loaded members (``modules``: eval nn.Modules) and their preprocessing specs."""

    names: tuple[str, ...]
    modules: tuple[Any, ...]
    specs: tuple[Any, ...]
    load_seconds: float
    device: str
    torch_version: str


def resolve_device(provider: str) -> str:
    """The torch device matching an onnxruntime provider: 'cpu', or 'cuda' (auto: cuda when torch sees one)."""
    if provider == "cpu":
        return "cpu"
    if provider == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda"


def unavailable_reason(run_dir: Path, names: Sequence[str], device: str) -> str | None:
    """Why the PyTorch reference cannot run here (None when it can)."""
    missing = [n for n in names if not (run_dir / "members" / n).exists()]
    if missing:
        return f"PyTorch eager reference skipped: no checkpoint for {', '.join(missing)} under {run_dir / 'members'}"
    if device == "cuda":
        if not torch.cuda.is_available():
            return "PyTorch eager reference on CUDA skipped: torch sees no CUDA device"
    return None


def load_members(run_dir: Path, names: Sequence[str], device: str = "cpu") -> TorchMembers:
    """Load each member checkpoint as an eval module on ``device`` (call ``unavailable_reason`` first)."""
    t0 = time.perf_counter()
    modules, specs = [], []
    for name in names:
        ckpt = load_checkpoint(run_dir / "members" / name)
        modules.append(ckpt.model.eval().to(device))
        specs.append(ckpt.info.preprocess)
    return TorchMembers(
        tuple(names), tuple(modules), tuple(specs), time.perf_counter() - t0, device, torch.__version__
    )


def torch_version() -> str:
    return str(torch.__version__)


def onednn_bf16() -> bool:
    """Whether torch's oneDNN computes bf16 on this CPU (its own check, beside the CPU flags)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def to_channels_last(members: TorchMembers) -> None:
    """Convert the loaded modules to channels_last, in place (after the FP32 rows are measured)."""
    for module in members.modules:
        module.to(memory_format=torch.channels_last)


def _inputs(members: TorchMembers, grays: Sequence[np.ndarray], channels_last: bool) -> list[torch.Tensor]:
    """Each member's normalised input batch on its device (NHWC in memory with ``channels_last``)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.from_numpy(np.ascontiguousarray(to_model_input(grays, spec, normalized=True)))
        .to(members.device)
        .contiguous(memory_format=layout)
        for spec in members.specs
    ]


def _autocast(bf16: bool) -> contextlib.AbstractContextManager[object]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def members_call(
    members: TorchMembers,
    grays: Sequence[np.ndarray],
    threads: int | None,
    *,
    channels_last: bool = False,
    bf16: bool = False,
) -> tuple[Callable[[], Mapping[str, float] | None], Callable[[], None]]:
    """A call that runs softmax(model(x)) for every member in sequence, and a function that restores
    torch's thread count afterwards. Inputs are normalised and moved to the device once, outside the call.
    ``channels_last`` / ``bf16`` (CPU autocast): cxr-bench's "PyTorch best" (``cxr.bench.torch_best``)."""

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    inputs = _inputs(members, grays, channels_last)
    cuda = members.device.startswith("cuda")

    def call() -> None:
        with torch.inference_mode(), _autocast(bf16):
            for module, x in zip(members.modules, inputs, strict=True):
                torch.softmax(module(x).float(), dim=1)
            if cuda:
                torch.cuda.synchronize()
        return None

    def restore() -> None:
        torch.set_num_threads(previous)

    return call, restore


def member_top1(
    members: TorchMembers, grays: Sequence[np.ndarray], *, channels_last: bool, bf16: bool, batch: int = 8
) -> np.ndarray:
    """Each member's top-1 class of every image, shape [members, images], in the mode given."""
    out = np.zeros((len(members.modules), len(grays)), np.int64)
    with torch.inference_mode(), _autocast(bf16):
        for start in range(0, len(grays), batch):
            xs = _inputs(members, grays[start : start + batch], channels_last)
            for i, (module, x) in enumerate(zip(members.modules, xs, strict=True)):
                out[i, start : start + len(x)] = module(x).float().argmax(dim=1).cpu().numpy()
    return out
