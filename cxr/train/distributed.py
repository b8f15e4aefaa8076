"""Where each training process computes: its place under ``torchrun`` (DDP), its device and RNG streams.

``train.batch_size`` is the global batch. Rank 0 alone reads and writes the run directory and decides what
all must agree on (``on_main``); every collective is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cxr.errors import ConfigError, CxrError, TrainError
from cxr.train.config import TrainSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

LAUNCH_HINT = (
    "start it with torchrun, e.g. `torchrun --nproc_per_node=2 -m cxr train base --config CONFIG --all`"
)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def _env_int(name: str) -> int | None:
    if not (text := os.environ.get(name)):
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer", hint=LAUNCH_HINT
        ) from None


def context_from_env() -> DistContext:
    """The context torchrun describes in the environment (``SINGLE`` when it is not there)."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return SINGLE
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None:
        raise ConfigError(f"WORLD_SIZE={world} is set but RANK is not", hint=LAUNCH_HINT)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}", hint=LAUNCH_HINT)
    return DistContext(rank=rank, world_size=world, local_rank=rank if local is None else local)


def current_context() -> DistContext:
    """The initialised process group's context; refuses to train alone in a torchrun worker."""
    if dist.is_available() and dist.is_initialized():
        local = _env_int("LOCAL_RANK")
        rank = dist.get_rank()
        return DistContext(
            rank=rank, world_size=dist.get_world_size(), local_rank=rank if local is None else local
        )
    env = context_from_env()
    if env.enabled:
        raise ConfigError(
            f"this process is one of {env.world_size} that torchrun started (RANK={env.rank}), but no "
            "process group is initialised, so every process would train alone and write the same files",
            hint="use `cxr train base` (it joins the group), or call train_member inside "
            "`with cxr.train.distributed.distributed(cfg.train) as ctx:` and pass dist=ctx",
        )
    return SINGLE


def check_local_gpu(ctx: DistContext) -> None:
    if ctx.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"process LOCAL_RANK={ctx.local_rank} has no GPU: this node has {torch.cuda.device_count()}",
            hint="start at most as many processes per node as it has GPUs (torchrun --nproc_per_node)",
        )


@contextlib.contextmanager
def distributed(settings: TrainSettings) -> Iterator[DistContext]:
    """Join the process group torchrun describes for the block (one the caller opened stays open)."""
    if dist.is_available() and dist.is_initialized():
        yield current_context()
        return
    ctx = context_from_env()
    if not ctx.enabled:
        yield SINGLE
        return
    if not dist.is_available():
        raise ConfigError(
            f"torchrun started {ctx.world_size} processes but this torch build has no torch.distributed",
            hint="install a torch build with distributed support, or train with one process",
        )
    # NCCL where the processes train on CUDA GPUs, gloo on CPUs
    cuda = settings.device.startswith("cuda") or (settings.device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        check_local_gpu(ctx)
        torch.cuda.set_device(ctx.local_rank)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=settings.dist_timeout_s))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot join the {ctx.world_size}-process group ({backend}, rank {ctx.rank}, MASTER_ADDR="
            f"{os.environ.get('MASTER_ADDR', '?')}, MASTER_PORT={os.environ.get('MASTER_PORT', '?')}): {e}",
            hint="check that every node can reach the rendezvous endpoint and that all nodes use the same "
            "--nnodes / --nproc_per_node",
        ) from e
    log.info("joined %d-process group as rank %d (backend %s)", ctx.world_size, ctx.rank, backend)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def check_global_batch(ctx: DistContext, batch_size: int, key: str) -> int:
    """The per-process share of a global batch; the world size must divide it."""
    if batch_size % ctx.world_size:
        lower = max(ctx.world_size, batch_size - batch_size % ctx.world_size)
        raise ConfigError(
            f"{key}={batch_size} is the global batch, and the {ctx.world_size} training processes cannot "
            f"share it evenly ({batch_size} is not a multiple of {ctx.world_size})",
            hint=f"use a multiple of {ctx.world_size}, e.g. --set {key}={lower} or "
            f"{lower + ctx.world_size}, or start another number of processes (torchrun --nproc_per_node)",
        )
    return batch_size // ctx.world_size


def rank_seed(seed: int, ctx: DistContext) -> int:
    """Rank 0 keeps ``seed`` (a single process is unchanged); other ranks draw their own dropout masks."""
    if ctx.rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, ctx.rank]).generate_state(1)[0])


def broadcast_object(ctx: DistContext, obj: T | None) -> T:
    """Rank 0's ``obj`` on every rank (pickled; keep tensors in it on the CPU)."""
    if not ctx.enabled:
        return obj  # type: ignore[return-value]
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def all_gather_object(ctx: DistContext, obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank; its error stops every rank."""
    if not ctx.enabled:
        return fn()
    if ctx.is_main:
        try:
            result = fn()
        except CxrError as e:
            broadcast_object(ctx, ("error", e))
            raise
        except BaseException as e:
            broadcast_object(ctx, ("failed", f"{type(e).__name__}: {e}"))
            raise
        try:  # the result is pickled before anything is sent: a failure here still reaches the others
            broadcast_object(ctx, ("ok", result))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            broadcast_object(ctx, ("failed", f"cannot send {type(result).__name__}: {e}"))
            raise
        return result
    reply: tuple[str, Any] = broadcast_object(ctx, None)
    status, value = reply
    if status == "ok":
        return value  # type: ignore[no-any-return]
    if status == "error":
        raise value
    raise TrainError(f"rank 0 failed: {value}", hint="see rank 0's log for the traceback")


def sync_module(ctx: DistContext, model: nn.Module, *, buffers_only: bool = False) -> None:
    """Make every rank's ``model`` equal rank 0's (all parameters and buffers, or the buffers only)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
        for t in tensors:
            dist.broadcast(t, src=0)


def wrap_ddp(ctx: DistContext, model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (``model`` itself for one process); wrap again when the trainable set changes."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    # buffers (BatchNorm statistics) are sent from rank 0 at every forward pass: DDP's default
    return DistributedDataParallel(model, device_ids=ids)


def convert_sync_batchnorm(
    ctx: DistContext, model: nn.Module, device: torch.device, wanted: bool
) -> nn.Module:
    """BatchNorm over the global batch (SyncBatchNorm) under DDP on GPUs, when ``wanted``; timm's converter,
    since torch's drops the activation of timm's ``BatchNormAct2d``."""
    if not ctx.enabled or not wanted:
        return model
    if device.type != "cuda":
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            log.info("BatchNorm statistics are per process on the CPU (torch has no CPU SyncBatchNorm)")
        return model
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)  # type: ignore[no-any-return]


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
        native_bf16 = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        precision = "bf16" if native_bf16 else "fp16" if cuda else "fp32"
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
