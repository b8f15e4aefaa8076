"""Export benchmark per paper architecture on this CPU: export time, ONNX size, parity, latency, INT8 agreement.

For each architecture (random weights, 4 classes, ``--size`` px): ``export_onnx`` (trace, check, simplify,
batch checks 1/3/8), FP32 parity with PyTorch on real images (``../shared/data`` when present, else
synthetic) plus noise, static INT8 (QDQ, per channel) calibrated on other real images, then latency at
batch 1 and 8 of PyTorch eager, onnxruntime FP32 and onnxruntime INT8 (same thread count, warm-up, the
engines taking turns each round, median of rounds), and INT8 top-1 agreement / max probability drift vs FP32. ``--dynamic`` also measures dynamic
INT8 quantization (not offered by cxr: slower and less accurate for CNNs) to keep that claim checked.

Rows are returned by ``bench_arch``; ``main`` writes them once (JSON) and prints a Markdown table.
Random weights make top-1 agreement a stress test of numerics, not an accuracy claim.

    python benchmarks/bench_export.py --archs convnext_base,densenet121 --size 224 --out runs/bench_export.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Both runtimes idle their threads passively: onnxruntime sessions run with spinning off (cxr's default), and
# libgomp's active spin-wait made PyTorch 10-50x slower at random on this shared 2-core machine. Must be set
# before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PAPER = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "legacy_xception")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiography-dev"


def load_images(n_calib: int, n_verify: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Disjoint calibration / verification grayscale images: real when available, else synthetic."""
    from cxr.imaging.decode import decode_gray

    files = sorted(SHARED.glob("*/images/*.png")) if SHARED.is_dir() else []
    if len(files) >= n_calib + n_verify:
        rng = np.random.default_rng(seed)
        picked = [files[i] for i in rng.permutation(len(files))[: n_calib + n_verify]]
        grays = [decode_gray(p) for p in picked]
        return grays[:n_calib], grays[n_calib:], f"real ({SHARED})"
    from cxr.export.inputs import synthetic_images

    calib = synthetic_images(n_calib, seed).grays
    verify = synthetic_images(n_verify, seed + 1).grays
    return list(calib), list(verify), "synthetic"


def time_interleaved(
    engines: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median ms per engine; the engines take turns each round, so load changes hit them alike."""
    import torch

    times: dict[str, list[float]] = {k: [] for k in engines}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for name, fn in engines.items():
                t = time.perf_counter()
                fn(x)
                if r >= warmup:
                    times[name].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_arch(
    name: str,
    size: int,
    calib: list[np.ndarray],
    verify: list[np.ndarray],
    threads: int,
    repeats: int,
    workdir: Path,
    dynamic: bool,
) -> dict[str, Any]:
    import timm
    import torch

    from cxr.export.inputs import random_inputs
    from cxr.export.onnx_export import ExportConfig, export_onnx
    from cxr.export.quantize import Int8Config, make_int8
    from cxr.export.verify import VerifyConfig, compare_logits, onnx_logits, open_session, verify_onnx
    from cxr.imaging.preprocess import to_model_input
    from cxr.labels import CLASSES
    from cxr.spec import ModelMetadata, PreprocessSpec

    spec = PreprocessSpec.square(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=len(CLASSES)).eval()
    out = workdir / f"{name}.onnx"
    meta = ModelMetadata(CLASSES, spec, "float_normalized", {"member": name, "timm_name": name})
    exp = export_onnx(model, ExportConfig(out=out, metadata=meta, input_size=(size, size), threads=threads))
    x_ver = to_model_input(verify, spec, normalized=True).astype(np.float32)
    x_cal = to_model_input(calib, spec, normalized=True).astype(np.float32)
    noise = random_inputs(spec, 4, np.random.default_rng(0))
    parity = verify_onnx(
        model, out, np.concatenate([x_ver, noise]), VerifyConfig(name=name, strict=False, threads=threads)
    )
    t = time.perf_counter()
    int8 = make_int8(
        out, Int8Config(calibration=x_cal, verify_inputs=x_ver, threads=threads, min_agreement=0.5)
    )
    int8_seconds = time.perf_counter() - t

    row: dict[str, Any] = {
        "arch": name,
        "size": size,
        "exporter": exp.exporter,
        "opset": exp.opset,
        "simplified": exp.simplified,
        "export_s": round(exp.seconds, 2),
        "onnx_mib": round(exp.size_bytes / 2**20, 1),
        "gflop_per_image": round(exp.flops_per_image / 1e9, 2),
        "parity_n": parity.n,
        "parity_max_abs": parity.max_abs,
        "parity_max_rel": parity.max_rel,
        "parity_top1": parity.top1_agreement,
        "parity_passed": parity.passed,
        "batch_checks": [c.batch for c in exp.batch_checks if c.passed],
        "int8_make_s": round(int8_seconds, 1),
        "int8_mib": round(int8.size_bytes / 2**20, 1) if int8.path else None,
        "int8_top1_vs_fp32": int8.report.top1_agreement if int8.report else None,
        "int8_max_prob_drift": int8.report.max_abs if int8.report else None,
        "int8_usable_at_99": bool(int8.report and int8.report.top1_agreement >= 0.99),
    }
    engines: dict[str, Callable[[np.ndarray], Any]] = {}
    engines["torch"] = lambda xb: model(torch.from_numpy(xb))  # timed under inference_mode
    sess32 = open_session(out, threads)
    engines["ort_fp32"] = lambda xb: onnx_logits(sess32, xb, len(xb))
    if int8.path is not None:
        sess8 = open_session(int8.path, threads)
        engines["ort_int8"] = lambda xb: onnx_logits(sess8, xb, len(xb))
    if dynamic:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        dyn = workdir / f"{name}.dyn.onnx"
        quantize_dynamic(str(out), str(dyn), weight_type=QuantType.QInt8, per_channel=True)
        sess_d = open_session(dyn, threads)
        rep = compare_logits(
            onnx_logits(sess32, x_ver), onnx_logits(sess_d, x_ver), VerifyConfig(atol=None, strict=False),
            reference="fp32", candidate="dynamic int8",
        )  # fmt: skip
        row["dyn_int8_top1_vs_fp32"] = rep.top1_agreement
        row["dyn_int8_max_prob_drift"] = rep.max_abs
        engines["ort_dyn_int8"] = lambda xb: onnx_logits(sess_d, xb, len(xb))
    for batch in (1, 8):
        xb = np.ascontiguousarray(np.resize(x_ver, (batch, *x_ver.shape[1:])))
        reps = repeats if batch == 1 else max(3, repeats // 2)
        for engine, ms in time_interleaved(engines, xb, reps).items():
            row[f"{engine}_b{batch}_ms"] = round(ms, 1)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("arch", "arch"),
        ("export_s", "export s"),
        ("onnx_mib", "ONNX MiB"),
        ("gflop_per_image", "GFLOP/img"),
        ("parity_max_abs", "parity max abs"),
        ("parity_top1", "parity top-1"),
        ("torch_b1_ms", "torch b1 ms"),
        ("ort_fp32_b1_ms", "ORT fp32 b1"),
        ("ort_int8_b1_ms", "ORT int8 b1"),
        ("torch_b8_ms", "torch b8 ms"),
        ("ort_fp32_b8_ms", "ORT fp32 b8"),
        ("ort_int8_b8_ms", "ORT int8 b8"),
        ("int8_top1_vs_fp32", "int8 top-1 vs fp32"),
        ("int8_max_prob_drift", "int8 max drift"),
    ]
    if any("ort_dyn_int8_b1_ms" in r for r in rows):
        cols += [("ort_dyn_int8_b1_ms", "dyn int8 b1"), ("dyn_int8_top1_vs_fp32", "dyn int8 top-1")]

    def fmt(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if "top1" in key:
            return f"{v:.1%}"
        if "max_abs" in key or "drift" in key:
            return f"{v:.1e}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(PAPER), help="comma-separated timm names")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8, help="timed rounds at batch 1 (batch 8: half)")
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--verify", type=int, default=48, help="verification images (disjoint)")
    ap.add_argument("--dynamic", action="store_true", help="also measure dynamic INT8 quantization")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_export.json"))
    args = ap.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)  # a benchmark script: the process is ours
    calib, verify, source = load_images(args.calib, args.verify, seed=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        for name in [a.strip() for a in args.archs.split(",") if a.strip()]:
            t = time.perf_counter()
            row = bench_arch(
                name, args.size, calib, verify, args.threads, args.repeats, Path(tmp), args.dynamic
            )
            row["bench_s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            for f in Path(tmp).glob(f"{name}*"):
                f.unlink()
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_1_5_15": os.getloadavg(),
        },
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "images": source,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(rows))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
