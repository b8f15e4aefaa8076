"""Check cxr's CUDA and TensorRT paths on a GPU machine; write one JSON report.

For each of cpu, cuda, tensorrt (FP32) and tensorrt (FP16): open the model through ``Predictor`` (the code
users run), record the providers the session really got and any fallback warning, compare probabilities
with the CPU result on the same images (max abs difference, argmax agreement), time session creation (the
TensorRT engine build) and a second creation (engine cache hit), and time inference at batch 1 and at
``--batch-size`` (p50/p90/p99 ms, images/s). Then run ``cxr-predict scan --strict-provider`` on each GPU
provider. Exit 0 when every GPU path really ran on its provider and matched the CPU; 1 otherwise; with
``--allow-cpu`` (a dry run on a machine without a GPU) always 0, statuses still recorded.

    python scripts/gpu_check.py --out gpu_check.json [--model M.onnx | --timm resnet50] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS: list[dict[str, Any]] = [
    {"name": "cpu", "provider": "cpu", "trt_fp16": False, "atol": 0.0},
    {"name": "cuda", "provider": "cuda", "trt_fp16": False, "atol": 1e-3},
    {"name": "tensorrt-fp32", "provider": "tensorrt", "trt_fp16": False, "atol": 2e-3},
    {"name": "tensorrt-fp16", "provider": "tensorrt", "trt_fp16": True, "atol": 3e-2},
]


def _preload_gpu_libraries() -> str:
    """onnxruntime-gpu >= 1.21 can load CUDA/cuDNN/TensorRT from the nvidia-* pip packages itself."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "onnxruntime has no preload_dlls (relying on LD_LIBRARY_PATH)"
    try:
        preload()
        return "preload_dlls() ok"
    except Exception as e:  # a missing library here shows up again, precisely, when the session falls back
        return f"preload_dlls() failed: {type(e).__name__}: {e}"


def machine() -> dict[str, Any]:
    import onnxruntime as ort

    from cxr.session import available_providers, gpu_name, tensorrt_version

    smi = shutil.which("nvidia-smi")
    smi_out = ""
    if smi:
        smi_out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "available_providers": list(available_providers()),
        "tensorrt": tensorrt_version(),
        "gpu": gpu_name(0),
        "nvidia_smi": smi_out,
    }


def build_model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    if args.model:
        return args.model, f"given: {args.model}"
    if args.timm:
        try:
            from benchmarks.bench_scan import export_timm

            return export_timm(args.timm, args.size, work / f"{args.timm}.onnx"), f"timm {args.timm} (random)"
        except ImportError as e:
            print(f"cannot export {args.timm} ({e}); using the tiny test model", file=sys.stderr)
    from tests.onnx_factory import make_fused_model

    return make_fused_model(work / "tiny.onnx", size=args.size), f"tiny fused test model at {args.size} px"


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic synthetic radiograph-like images of assorted sizes (no files needed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (256, 256) if i % 2 else (300, 280)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = 120 + 90 * np.sin(6 * xx + i) * np.cos(4 * yy) + rng.normal(0, 12, (h, w))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def latency(pred: Any, batch: np.ndarray, iterations: int, warmup: int = 3) -> dict[str, float]:
    sess, name = pred.info.session, pred.input_name
    for _ in range(warmup):
        sess.run(None, {name: batch})
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        sess.run(None, {name: batch})
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {
        "batch": int(batch.shape[0]),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "images_per_s": round(float(batch.shape[0] / np.median(times)), 2),
    }


def check_config(
    cfg: dict[str, Any],
    model: Path,
    grays: list[np.ndarray],
    ref: np.ndarray | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from cxr.runtime import Predictor, PredictorConfig, SessionConfig

    sc = SessionConfig(
        provider=cfg["provider"],
        trt_fp16=cfg["trt_fp16"],
        trt_cache_dir=args.trt_cache,
        device_id=args.device_id,
    )
    row: dict[str, Any] = {"name": cfg["name"], "requested": cfg["provider"], "fp16": cfg["trt_fp16"]}
    t0 = time.perf_counter()
    pred = Predictor.from_path(model, PredictorConfig(session=sc, batch_size=args.batch_size))
    batch = pred.prepare(grays[: args.batch_size])
    pred.run(batch)  # TensorRT builds its engine on the first run
    row["first_session_and_run_s"] = round(time.perf_counter() - t0, 3)
    row["providers_used"] = list(pred.info.providers)
    row["provider"] = pred.provider
    row["warnings"] = list(pred.info.warnings)
    row["really_used"] = pred.provider == cfg["provider"]
    probs = np.concatenate(
        [
            pred.run(pred.prepare(grays[i : i + args.batch_size])).probabilities
            for i in range(0, len(grays), args.batch_size)
        ]
    )
    if ref is not None:
        diff = float(np.abs(probs - ref).max())
        row["max_abs_diff_vs_cpu"] = diff
        row["argmax_agreement"] = float((probs.argmax(1) == ref.argmax(1)).mean())
        row["parity_ok"] = diff <= cfg["atol"]
    row["latency"] = [latency(pred, batch[:1], args.iterations), latency(pred, batch, args.iterations)]
    if cfg["provider"] == "tensorrt" and row["really_used"]:
        t0 = time.perf_counter()
        again = Predictor.from_path(model, PredictorConfig(session=sc, batch_size=args.batch_size))
        again.run(batch)
        row["cached_session_and_run_s"] = round(time.perf_counter() - t0, 3)
        from cxr.session import trt_cache_dir

        cache = trt_cache_dir(sc, model)
        row["trt_cache_dir"] = str(cache)
        row["trt_cache_files"] = sorted(p.name for p in cache.iterdir())
    row["_probs"] = probs
    return row


def check_cli(provider: str, model: Path, work: Path) -> dict[str, Any]:
    """`cxr-predict scan --provider P --strict-provider` on a few PNGs: exit 0 and rows that name P."""
    import csv

    from PIL import Image
    from typer.testing import CliRunner

    from cxr.cli.predict import app

    folder = work / f"cli_{provider}"
    folder.mkdir(exist_ok=True)
    for i, g in enumerate(images(6, seed=3)):
        Image.fromarray(g).save(folder / f"{i}.png")
    out = work / f"cli_{provider}.csv"
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(folder),
            "-m",
            str(model),
            "-o",
            str(out),
            "--provider",
            provider,
            "--strict-provider",
            "--overwrite",
        ],
    )
    providers = set()
    if out.is_file():
        with out.open(newline="") as f:
            providers = {r["provider"] for r in csv.DictReader(f)}
    return {
        "provider": provider,
        "exit_code": res.exit_code,
        "row_providers": sorted(providers),
        "stderr_tail": res.stderr[-600:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--timm", default=None, help="export this timm model (needs torch, timm, onnx)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--trt-cache", type=Path, default=None)
    ap.add_argument("--skip", action="append", default=[], help="config name to skip (e.g. tensorrt-fp16)")
    ap.add_argument("--allow-cpu", action="store_true", help="dry run: no GPU is not a failure")
    args = ap.parse_args()

    report: dict[str, Any] = {
        "preload": _preload_gpu_libraries(),
        "machine": machine(),
        "configs": [],
        "cli": [],
    }
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-check-") as tmp:
        work = Path(tmp)
        args.trt_cache = args.trt_cache or work / "trt-cache"
        model, how = build_model(args, work)
        report["model"] = {"path": str(model), "how": how}
        grays = images(args.images)
        ref = None
        for cfg in CONFIGS:
            if cfg["name"] in args.skip:
                continue
            t0 = time.perf_counter()
            try:
                row = check_config(cfg, model, grays, ref, args)
                if cfg["name"] == "cpu":
                    ref = row["_probs"]
                row.pop("_probs")
                row["status"] = (
                    "ok"
                    if row["really_used"] and row.get("parity_ok", True)
                    else ("fallback" if not row["really_used"] else "parity-failed")
                )
            except Exception as e:  # record and go on: one broken provider must not hide the others
                row = {
                    "name": cfg["name"],
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-2000:],
                }
            row["seconds"] = round(time.perf_counter() - t0, 2)
            report["configs"].append(row)
            print(
                f"{row['name']:>14}: {row['status']} {row.get('providers_used', '')} {row.get('max_abs_diff_vs_cpu', '')}",
                file=sys.stderr,
            )
        for provider in ("cuda", "tensorrt"):
            if any(
                c["requested"] == provider and c["status"] == "ok"
                for c in report["configs"]
                if "requested" in c
            ):
                report["cli"].append(check_cli(provider, model, work))
    gpu_rows = [c for c in report["configs"] if c["name"] != "cpu"]
    report["passed"] = (
        bool(gpu_rows)
        and all(c["status"] == "ok" for c in gpu_rows)
        and all(c["exit_code"] == 0 and c["row_providers"] == [c["provider"]] for c in report["cli"])
    )
    report["dry_run"] = args.allow_cpu
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"passed={report['passed']} -> {args.out}", file=sys.stderr)
    return 0 if (report["passed"] or args.allow_cpu) else 1


if __name__ == "__main__":
    sys.exit(main())
