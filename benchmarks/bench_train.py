"""Training throughput (images/s) of each base model on this machine, FP32 vs bf16 + channels_last, as JSON lines.

Runs cxr's own training step (``cxr.train.loop.train_step``: forward, class-weighted loss, backward, AdamW
step, per-iteration cosine schedule) on random tensors, for each backbone, mode and phase: ``finetune`` (all
weights train), ``adapt`` (frozen backbone, head only) and ``eval`` (forward only, as in validation and
prediction). Modes (``--modes``): ``fp32``; ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``, the
``DeviceSetup`` cxr trains with when ``train.precision`` is bf16); ``fp32-cl`` / ``bf16-cl``: the same with
the model and its inputs in channels_last. Each mode builds the backbone afresh (same seed). One warm-up
step, then ``--steps`` timed steps; the row reports the median, the best and, beside an ``fp32`` row of the
same backbone and phase, ``speedup_vs_fp32``. ``bf16_native`` says whether the CPU computes bf16 in hardware
(AVX512-BF16 / AMX): without it torch emulates bf16 and it is slower than FP32. The 1-minute load average is
recorded because other processes on a shared machine distort the timing.

    python benchmarks/bench_train.py                      # the five backbones, batch 32, 64 px, fp32 vs bf16-cl
    python benchmarks/bench_train.py --steps 3 --size 64 --batch 8 --phases finetune   # a short check
    python benchmarks/bench_train.py --backbones vgg19 --size 96 --modes fp32 bf16 bf16-cl --out runs/bench_train.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cxr.train.backbones import BACKBONES, create_backbone, resolve_timm_name, set_phase, train_mode
from cxr.train.config import TrainSettings
from cxr.train.distributed import DeviceSetup, cpu_has_native_bf16
from cxr.train.loop import PhaseState, make_optimizer, make_scheduler, train_step

PHASES = ("finetune", "adapt", "eval")
MODES = {  # name -> (autocast dtype, channels_last)
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "fp32-cl": (None, True),
    "bf16-cl": (torch.bfloat16, True),
}


def _time(fn: Callable[[], object], steps: int) -> list[float]:
    fn()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor, setup: DeviceSetup) -> torch.Tensor:
    with setup.autocast():
        return model(setup.to_input(x))


def _setup(mode: str) -> DeviceSetup:
    amp, channels_last = MODES[mode]
    return DeviceSetup(
        device=torch.device("cpu"), amp_dtype=amp, channels_last=channels_last, pin_memory=False
    )


def _phase_times(
    model: torch.nn.Module, phase: str, x: torch.Tensor, y: torch.Tensor, setup: DeviceSetup, steps: int
) -> list[float]:
    if phase == "eval":
        model.eval()
        return _time(lambda: _forward(model, x, setup), steps)
    settings = TrainSettings(batch_size=int(x.shape[0]), device="cpu")
    params = set_phase(model, phase)
    train_mode(model, phase)
    opt = make_optimizer(params, settings, lr=1e-4)
    state = PhaseState(model, torch.ones(4), opt, make_scheduler(opt, settings.scheduler, 10), setup)
    return _time(functools.partial(train_step, state, x, y), steps)


def bench_backbone(
    name: str, *, batch: int, size: int, steps: int, phases: Sequence[str], modes: Sequence[str] = ("fp32",)
) -> list[dict[str, Any]]:
    """One row per mode x phase for ``name``: step time (median, best), images per second, speed-up."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 4, (batch,), generator=g)
    rows: list[dict[str, Any]] = []
    for mode in modes:
        setup = _setup(mode)
        model = create_backbone(name, 4, pretrained=False, seed=0)
        if setup.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for phase in phases:
            times = _phase_times(model, phase, x, y, setup, steps)
            rows.append(_row(name, mode, phase, setup, times, batch=batch, size=size, steps=steps))
    for row in rows:
        base = next((r for r in rows if r["mode"] == "fp32" and r["phase"] == row["phase"]), None)
        row["speedup_vs_fp32"] = (
            None if base is None else round(row["images_per_s"] / base["images_per_s"], 2)
        )
    return rows


def _row(
    name: str,
    mode: str,
    phase: str,
    setup: DeviceSetup,
    times: list[float],
    *,
    batch: int,
    size: int,
    steps: int,
) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "bench": "train",
        "backbone": name,
        "timm_name": resolve_timm_name(name),
        "mode": mode,
        "precision": setup.precision,
        "channels_last": setup.channels_last,
        "bf16_native": cpu_has_native_bf16(),
        "phase": phase,
        "batch": batch,
        "input_size": size,
        "steps": steps,
        "step_s_median": round(median, 4),
        "step_s_best": round(min(times), 4),
        "images_per_s": round(batch / median, 2),
        "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["fp32", "bf16-cl"])
    parser.add_argument("--out", type=Path, help="also append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    if any(MODES[m][0] is not None for m in args.modes) and not cpu_has_native_bf16():
        print(
            "note: this CPU has no bf16 in hardware: torch emulates it, bf16 rows will be slower",
            file=sys.stderr,
        )
    rows: list[dict[str, Any]] = []
    for name in args.backbones:
        for row in bench_backbone(
            name, batch=args.batch, size=args.size, steps=args.steps, phases=args.phases, modes=args.modes
        ):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
