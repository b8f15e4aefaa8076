"""The INT8 verdict on a real run without touching it: NNCF INT8 members, the fused INT8 graph and its verdict.

Takes RUN (a finished run: ``onnx/<name>.onnx``, ``stack/meta.onnx``, ``manifest.csv``) and OUT. Makes in OUT:
``onnx/`` (hard links to RUN's FP32 members plus their ``<name>.int8.onnx``, built by
``cxr.export.quantize.make_int8`` on RUN's train (calibration) and val (accuracy control) images),
``member_int8.json``, ``ensemble.onnx`` + ``ensemble.int8.onnx`` with the verdict records (``cxr fuse``'s own
code, test split of RUN) and ``fuse_report.*``; prints each member's own top-1 agreement per backend and CPU
kind, and an OpenVINO batch-1 latency of FP32, BF16 and INT8.

    python benchmarks/int8_rehearsal.py runs/rehearse runs/rehearse-int8 [--skip-members] [--skip-fuse] [--threads 2]
    python benchmarks/int8_rehearsal.py runs/rehearse OUT --members xception,densenet121   # only these rebuilt

``--members`` rebuilds only the members named (the others' INT8 files must be in OUT/onnx already, built by the
same recipe) and merges their rows into ``member_int8.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np


def members(run: Path, out: Path, names: list[str], threads: int | None) -> dict[str, dict]:
    from cxr.export.inputs import InputPool
    from cxr.export.onnx_files import read_metadata
    from cxr.export.quantize import Int8Config, make_int8
    from cxr.export.report import RunExportConfig

    pool = InputPool(RunExportConfig(run_dir=run))  # 300 train images to calibrate, the val split to control
    rows = {}
    for name in names:
        src = out / "onnx" / f"{name}.onnx"
        if not src.exists():
            os.link(run / "onnx" / f"{name}.onnx", src)
        spec = read_metadata(src).preprocess
        calib, source = pool.calibration_inputs(spec)
        val, sources = pool.variant_inputs(spec)
        cfg = Int8Config(
            calibration=calib, calibration_source=source, verify_inputs=val, sources=sources, threads=threads
        )
        res = make_int8(src, cfg)
        rows[name] = {
            "usable": res.usable,
            "reason": res.reason,
            "seconds": round(res.seconds, 1),
            "val_agreement": None if res.report is None else res.report.top1_agreement,
            "val_max_probability_change": None if res.report is None else res.report.max_abs,
            "settings": res.settings,
        }
    return rows


def latency(out: Path, runs: int, threads: int) -> list[str]:
    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(0).integers(0, 256, size=(1, 1, 224, 224), dtype=np.uint8)
    lines = []
    for name, file, hint in [("fp32", "ensemble.onnx", "f32"), ("bf16", "ensemble.onnx", "bf16")] + [
        ("int8", "ensemble.int8.onnx", "f32")
    ]:
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        request = core.compile_model(str(out / file), "CPU", config).create_infer_request()
        for _ in range(3):
            request.infer({"image": x})
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            request.infer({"image": x})
            times.append((time.perf_counter() - t) * 1000)
        lines.append(
            f"{name} ({file}, hint {hint}): median {np.median(times):.1f} ms, p90 {np.percentile(times, 90):.1f} ms"
        )
    return lines


def member_table(run: Path, out: Path, order: list[str], threads: int) -> list[str]:
    """Each member's own top-1 agreement and max probability change, INT8 vs FP32 fused, per backend and kind."""
    from cxr.cpu_kind import ISA_CAPS, cpu_kind
    from cxr.export.onnx_files import read_metadata
    from cxr.fuse.int8_check import labelled_test_images, member_drift, run_capped, run_graph
    from cxr.spec import OUTPUT_MEMBER_PROBABILITIES as MEMBERS

    meta = read_metadata(out / "ensemble.onnx")
    data = labelled_test_images(run, meta.preprocess, meta.classes)
    assert not isinstance(data, str), data
    ref = run_graph(out / "ensemble.onnx", data.images, "onnxruntime", threads)[0][MEMBERS]
    runs = {
        f"onnxruntime {cpu_kind()}": run_graph(
            out / "ensemble.int8.onnx", data.images, "onnxruntime", threads
        )[0],
        f"openvino {cpu_kind()}": run_graph(out / "ensemble.int8.onnx", data.images, "openvino", threads)[0],
        "openvino avx2 (capped)": run_capped(
            out / "ensemble.int8.onnx", data.images, ISA_CAPS["avx2"], threads
        )[0],
    }
    lines = [f"| backend, kind | {' | '.join(order)} |", "|---" * (len(order) + 1) + "|"]
    for name, got in runs.items():
        cells = {n: f"{a:.1%} / {d:.3f}" for n, a, d in member_drift(ref, got[MEMBERS], order)}
        lines.append(f"| {name} | {' | '.join(cells[n] for n in order)} |")
    return lines


def main() -> None:
    from cxr.fuse import FuseConfig, describe, fuse
    from cxr.fuse.members import load_meta

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--skip-members", action="store_true", help="OUT/onnx already holds the INT8 members")
    ap.add_argument("--members", default=None, help="comma-separated: rebuild only these members")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument(
        "--skip-fuse", action="store_true", help="no fuse: the tables of OUT's fused files, if any"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    meta = args.run / "stack" / "meta.onnx"
    order = list(load_meta(meta).member_order)
    (args.out / "onnx").mkdir(parents=True, exist_ok=True)
    if not args.skip_members:
        names = args.members.split(",") if args.members else order
        table = args.out / "member_int8.json"
        rows = json.loads(table.read_text(encoding="utf-8")) if args.members and table.is_file() else {}
        rows.update(members(args.run, args.out, names, args.threads))
        table.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if not args.skip_fuse:
        t = time.perf_counter()
        cfg = FuseConfig(
            args.out / "ensemble.onnx",
            variants=("int8",),
            run_dir=args.run,
            bf16_check=False,
            threads=args.threads,
        )
        res = fuse([args.out / "onnx" / f"{n}.onnx" for n in order], meta, cfg)
        print(describe(res))  # noqa: T201
        print(f"fuse with the INT8 verdict: {time.perf_counter() - t:.0f} s")  # noqa: T201
    if not (args.out / "ensemble.int8.onnx").is_file():
        return
    print("\n".join(member_table(args.run, args.out, order, args.threads)))  # noqa: T201
    print("\n".join(latency(args.out, args.latency_runs, args.threads)))  # noqa: T201


if __name__ == "__main__":
    main()
