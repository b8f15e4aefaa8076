"""Where and how to compute: takes ``TrainSettings``, makes a ``DeviceSetup``; its RNG streams.

``auto``: CUDA when present with bf16 autocast where supported (else fp16 with a gradient scaler); on the
CPU bf16 where the CPU has it in hardware (AVX512-BF16, AMX), else fp32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from cxr.errors import ConfigError
from cxr.train.config import TrainSettings
from cxr.train.distributed import SINGLE, DistContext, check_local_gpu

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    pin_memory: bool

    @property
    def use_scaler(self) -> bool:
        return self.device.type == "cuda" and self.amp_dtype == torch.float16

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.pin_memory)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (elsewhere torch emulates it, slower than FP32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_device(settings: TrainSettings, ctx: DistContext = SINGLE) -> DeviceSetup:
    """The device of this process: under torchrun, a CUDA run uses GPU ``LOCAL_RANK`` of its node."""
    wanted = settings.device
    has_cuda = torch.cuda.is_available()
    if wanted.startswith("cuda") and not has_cuda:
        raise ConfigError(
            f"train.device is {wanted!r} but no CUDA GPU is usable here (torch {torch.__version__})",
            hint="use --set train.device=cpu (or auto), or install a CUDA build of torch",
        )
    device = torch.device("cuda" if wanted == "auto" and has_cuda else "cpu" if wanted == "auto" else wanted)
    if ctx.enabled and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"train.device is {wanted!r}, but under torchrun each process uses the GPU of its LOCAL_RANK",
                hint="use --set train.device=cuda (or auto); choose GPUs with CUDA_VISIBLE_DEVICES",
            )
        check_local_gpu(ctx)
        device = torch.device("cuda", ctx.local_rank)
        # before any query: bf16 support, pinned memory, NCCL's object transfers
        torch.cuda.set_device(device)
    cuda = device.type == "cuda"
    precision = settings.precision
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision fp16 needs a CUDA GPU", hint="use fp32 (or bf16) on the CPU")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return DeviceSetup(
        device=device, amp_dtype=amp, channels_last=cuda and settings.channels_last, pin_memory=cuda
    )


@contextlib.contextmanager
def forked_rng(setup: DeviceSetup, seed: int) -> Iterator[None]:
    """Seed torch's RNG for the block (dropout, init) and restore the caller's RNG state afterwards."""
    dev = setup.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def rng_state(setup: DeviceSetup) -> dict[str, torch.Tensor | None]:
    """This process's RNG states: the CPU's and, on a GPU, the CUDA device's (GPU dropout draws there)."""
    cuda = setup.device.type == "cuda"
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(setup.device) if cuda else None}


def restore_rng(setup: DeviceSetup, ctx: DistContext, state: dict[str, Any], name: str) -> None:
    """Each process continues its own dropout RNG streams (saved per process) of member ``name``."""
    per_rank = state.get("rng_ranks")
    if isinstance(per_rank, list | tuple) and len(per_rank) == ctx.world_size:
        mine = per_rank[ctx.rank]
    elif ctx.is_main:
        mine = {"cpu": state["rng"], "cuda": state.get("cuda_rng")}
        if per_rank is not None:
            log.warning(
                "%s was trained by %d processes and resumes with %d: the global batches and their order "
                "stay the same, the other processes' dropout masks do not",
                name,
                len(per_rank),
                ctx.world_size,
            )
    else:
        return
    torch.set_rng_state(mine["cpu"])
    if mine.get("cuda") is not None and setup.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], setup.device)
