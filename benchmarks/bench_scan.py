"""`cxr-predict scan` throughput on a folder of real images vs the model's pure inference throughput.

Takes: a folder of images (default ../shared/data/radiography-dev), one or more models (``--model``; a tiny
cxr-shaped model built here; ``--timm NAME`` exports a timm model with random weights at ``--size`` px to a
temporary folder, which needs the train extra). Makes: one JSON row per model on stdout (and ``--out``):
pure inference images/s on prepared batches, scan images/s (decode + resize + inference + CSV rows),
decode-only images/s on one thread, and the ratio scan / inference (target: >= 0.9).

    python benchmarks/bench_scan.py --n 160 --batch-size 8 --timm resnet50
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime import Predictor, PredictorConfig, ScanConfig, SessionConfig, find_images, scan_folder  # noqa: E402
from cxr.runtime.predictor import auto_decode_workers  # noqa: E402
from cxr.spec import ModelMetadata, PreprocessSpec  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "radiography-dev"


def export_timm(name: str, size: int, out: Path) -> Path:
    """Export a timm model (random weights) as a cxr uint8-gray model: normalisation and softmax inside."""
    import onnx
    import timm
    import torch

    spec = PreprocessSpec.square(size)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model(name, pretrained=False, num_classes=4)
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.float().div(255.0).expand(-1, 3, -1, -1)
            return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

    model = Wrapped().eval()
    example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    meta = ModelMetadata(
        preprocess=spec, input_format="uint8_gray", card={"kind": "member", "timm_name": name}
    )
    for k, v in meta.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(out))
    return out


def tiny_model(size: int, out: Path) -> Path:
    from tests.onnx_factory import make_fused_model

    return make_fused_model(out, size=size)


def bench_one(
    model: Path, label: str, images: list[Path], args: argparse.Namespace, work: Path
) -> dict[str, object]:
    cfg = PredictorConfig(
        session=SessionConfig(provider=args.provider, threads=args.threads),
        batch_size=args.batch_size,
        decode_workers=args.workers or auto_decode_workers(args.provider),
    )
    pred = Predictor.from_path(model, cfg)
    folder = work / f"imgs_{label}"
    folder.mkdir()
    for i, src in enumerate(images):
        (folder / f"{i:05d}{src.suffix}").symlink_to(src.resolve())
    bs = args.batch_size
    n_batches = max(1, len(images) // bs)
    grays = [pred.decode(p) for p in images[: n_batches * bs]]
    batches = [pred.prepare(grays[i * bs : (i + 1) * bs]) for i in range(n_batches)]
    for b in batches[:2]:
        pred.run(b)  # warm-up
    infer, scan_rates, decode_rates = [], [], []
    infer_cpu, scan_cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            pred.run(b)
        infer.append(n_batches * bs / (time.perf_counter() - t0))
        infer_cpu.append((time.process_time() - c0) / (n_batches * bs))
        c0 = time.process_time()
        res = scan_folder(pred, ScanConfig(folder, output=work / f"{label}.csv", overwrite=True))
        scan_cpu.append((time.process_time() - c0) / len(images))
        if res.failed:
            raise SystemExit(f"{res.failed} files failed to decode: {res.failures[:3]}")
        scan_rates.append(res.images_per_second)
        t0 = time.perf_counter()
        for p in images[: 4 * bs]:
            pred.load(p)
        decode_rates.append(4 * bs / (time.perf_counter() - t0))
    best_infer, best_scan = max(infer), max(scan_rates)
    return {
        "model": label,
        "model_id": pred.model_id,
        "input_size": list(pred.metadata.preprocess.input_size),
        "provider": pred.provider,
        "threads": args.threads,
        "batch_size": bs,
        "decode_workers": pred.cfg.decode_workers,
        "images": len(images),
        "inference_images_per_s": round(best_infer, 2),
        "scan_images_per_s": round(best_scan, 2),
        "decode_images_per_s_1thread": round(max(decode_rates), 2),
        "scan_over_inference": round(best_scan / best_infer, 3),
        # CPU seconds per image (all threads): insensitive to other processes on a shared machine; on an
        # otherwise idle machine whose cores are saturated, throughput ratio ~ inference_cpu / scan_cpu.
        "inference_cpu_ms_per_image": round(1000 * min(infer_cpu), 2),
        "scan_cpu_ms_per_image": round(1000 * min(scan_cpu), 2),
        "cpu_ratio": round(min(infer_cpu) / min(scan_cpu), 3),
        "runs": {"inference": [round(x, 2) for x in infer], "scan": [round(x, 2) for x in scan_rates]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--n", type=int, default=160, help="images to scan (taken in sorted order)")
    ap.add_argument("--model", type=Path, action="append", default=[], help="a cxr ONNX model (repeatable)")
    ap.add_argument(
        "--timm", action="append", default=[], help="export this timm model at --size (repeatable)"
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny decode-dominated model")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--workers", type=int, default=None, help="decode threads (default: what cxr-predict picks)"
    )
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = ap.parse_args()

    if not args.images.is_dir():
        raise SystemExit(f"{args.images} not found: pass --images FOLDER")
    images = find_images(args.images, recursive=True)[: args.n]
    if len(images) < args.batch_size:
        raise SystemExit(f"only {len(images)} images in {args.images}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-scan-") as tmp:
        work = Path(tmp)
        models: list[tuple[str, Path]] = []
        if not args.no_tiny:
            models.append((f"tiny-{args.size}", tiny_model(args.size, work / "tiny.onnx")))
        for name in args.timm:
            t0 = time.perf_counter()
            path = export_timm(name, args.size, work / f"{name}.onnx")
            print(f"exported {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            models.append((f"{name}-{args.size}", path))
        models += [(p.stem, p) for p in args.model]
        for label, path in models:
            row = bench_one(path, label, images, args, work)
            rows.append(row)
            print(
                f"{label:>20}: inference {row['inference_images_per_s']:8.1f} img/s  scan "
                f"{row['scan_images_per_s']:8.1f} img/s  ratio {row['scan_over_inference']:.3f}  "
                f"(decode 1 thread {row['decode_images_per_s_1thread']:.0f} img/s; CPU ms/img inference "
                f"{row['inference_cpu_ms_per_image']} scan {row['scan_cpu_ms_per_image']}, ratio {row['cpu_ratio']})",
                file=sys.stderr,
            )
    text = json.dumps({"rows": rows, "numpy": np.__version__}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
