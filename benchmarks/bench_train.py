"""Training throughput (images/s) of each base model on this machine, as JSON lines.

Runs cxr's own training step (``cxr.train.loop.train_step``: forward, class-weighted loss, backward, AdamW
step, per-iteration cosine schedule) on random tensors, for each backbone and phase: ``finetune`` (all
weights train), ``adapt`` (frozen backbone, head only) and ``eval`` (forward only, as in validation and
prediction). One warm-up step, then ``--steps`` timed steps; the row reports the median and the best.
The 1-minute load average is recorded because other processes on a shared machine distort the timing.

    python benchmarks/bench_train.py                      # the five backbones, batch 32, 64 px
    python benchmarks/bench_train.py --backbones vgg19 --size 96 --out runs/bench_train.jsonl
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
from cxr.train.device import resolve_device
from cxr.train.loop import PhaseState, train_step
from cxr.train.schedule import make_optimizer, make_scheduler

PHASES = ("finetune", "adapt", "eval")


def _time(fn: Callable[[], object], steps: int) -> list[float]:
    fn()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def bench_backbone(
    name: str, *, batch: int, size: int, steps: int, phases: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per phase for ``name``: step time (median, best) and images per second."""
    settings = TrainSettings(batch_size=batch, device="cpu")
    setup = resolve_device(settings)
    model = create_backbone(name, 4, pretrained=False, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 4, (batch,), generator=g)
    weights = torch.ones(4)
    rows = []
    for phase in phases:
        if phase == "eval":
            model.eval()
            times = _time(lambda: _forward(model, x), steps)
        else:
            params = set_phase(model, phase)
            train_mode(model, phase)
            opt = make_optimizer(params, settings, lr=1e-4)
            state = PhaseState(model, weights, opt, make_scheduler(opt, settings.scheduler, 10), setup)
            times = _time(functools.partial(train_step, state, x, y), steps)
        median = statistics.median(times)
        rows.append(
            {
                "bench": "train",
                "backbone": name,
                "timm_name": resolve_timm_name(name),
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
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--out", type=Path, help="also append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for name in args.backbones:
        for row in bench_backbone(
            name, batch=args.batch, size=args.size, steps=args.steps, phases=args.phases
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
