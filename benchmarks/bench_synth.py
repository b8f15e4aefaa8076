"""Throughput of the synthetic chest X-ray generator on one CPU core, PNG writing included.

Usage: python benchmarks/bench_synth.py [--n 800] [--out DIR] [--size 299] [--seed 0]

Prints one JSON line: {"images_per_s": ..., "n": ..., ...}. Without --out the images go to a temporary
folder that is deleted afterwards; with --out they are kept there (DIR must not already hold a data set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr.data.synthetic import SynthConfig, render_xray, synthesize
from cxr.labels import CLASSES


def pin_to_one_core() -> int | None:
    """Restrict this process to one CPU (Linux); returns that CPU's id, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def bench_synth(n: int, out: Path, size: int = 299, seed: int = 0) -> dict[str, object]:
    """Synthesize about ``n`` images (rounded to whole classes) into ``out``; return one result row."""
    per_class = max(1, round(n / len(CLASSES)))
    render_xray("Normal", np.random.default_rng(seed), size)  # warm caches (grids, grain table)
    start, cpu_start = time.perf_counter(), time.process_time()
    res = synthesize(SynthConfig(out_dir=out, per_class=per_class, seed=seed, size=size))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    total = sum(res.counts.values())
    return {
        "images_per_s": round(total / seconds, 1),
        "n": total,
        "cpu_images_per_s": round(total / cpu_seconds, 1),  # less sensitive to other load on the machine
        "seconds": round(seconds, 3),
        "size": size,
        "ms_per_image": round(1000 * seconds / total, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="number of images (split evenly over classes)")
    parser.add_argument("--out", type=Path, default=None, help="keep the data set here (default: temp dir)")
    parser.add_argument("--size", type=int, default=299, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cpu = pin_to_one_core()
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
            row = bench_synth(args.n, Path(tmp), args.size, args.seed)
    else:
        row = bench_synth(args.n, args.out, args.size, args.seed)
    row.update({"cpu": cpu, "machine": platform.machine(), "python": platform.python_version()})
    print(json.dumps(row))


if __name__ == "__main__":
    main()
