"""The PyTorch eager reference of cxr-bench: the members' checkpoints run in sequence, in PyTorch.

Takes: a training run folder (``RUN_DIR/members/<name>`` checkpoints), the member names in ensemble order,
and pre-decoded gray images. Makes: a ready-to-time call (softmax(model(x)) for each member in sequence on
normalised float input) or a reason why the reference cannot run (checkpoints missing, no CUDA).
Training side (torch): ``cxr.bench.run`` reaches it only through ``cxr.bench.eager.reference()``.
"""

from __future__ import annotations

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


def members_call(
    members: TorchMembers, grays: Sequence[np.ndarray], threads: int | None
) -> tuple[Callable[[], Mapping[str, float] | None], Callable[[], None]]:
    """A call that runs softmax(model(x)) for every member in sequence, and a function that restores
    torch's thread count afterwards. Inputs are normalised and moved to the device once, outside the call."""

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    inputs = [
        torch.from_numpy(np.ascontiguousarray(to_model_input(grays, spec, normalized=True))).to(
            members.device
        )
        for spec in members.specs
    ]
    cuda = members.device.startswith("cuda")

    def call() -> None:
        with torch.inference_mode():
            for module, x in zip(members.modules, inputs, strict=True):
                torch.softmax(module(x), dim=1)
            if cuda:
                torch.cuda.synchronize()
        return None

    def restore() -> None:
        torch.set_num_threads(previous)

    return call, restore
