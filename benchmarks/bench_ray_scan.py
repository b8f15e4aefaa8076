"""Folder scan throughput: the single-machine scan vs the same scan on Ray (``--engine ray``).

Takes: a folder of images (default ../shared/data/radiography-dev, recursive), one or more cxr models
(``--model``; default a tiny cxr-shaped model built here, whose time is all decoding), a Ray address
(default: a local instance with ``--ray-cpus`` CPUs, started once and not counted in the scan times).
Makes: one JSON row per model and engine on stdout (and ``--out``): images/s over the whole scan (best of
``--repeats``; Ray start-up excluded, actor start-up included); for Ray also the seconds until the first
rows (actor processes, onnxruntime sessions, first block), the pool (actors, CPUs each, read mode), and
whether the Ray rows equal the local rows (they must: the benchmark exits 1 otherwise).

    python benchmarks/bench_ray_scan.py --n 451 --model runs/paper64/onnx/densenet121.onnx
    python benchmarks/bench_ray_scan.py --address auto --actors 8   # on a real cluster
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime import Predictor, PredictorConfig, ScanConfig, SessionConfig, find_images, scan_folder  # noqa: E402
from cxr.runtime.predictor import auto_decode_workers  # noqa: E402
from cxr.runtime.ray.scan import RayScanConfig, ray_scan  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "radiography-dev"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def bench_model(
    model: Path, label: str, folder: Path, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    cfg = PredictorConfig(
        session=SessionConfig(provider=args.provider, threads=args.threads),
        batch_size=args.batch_size,
        decode_workers=args.workers or auto_decode_workers(args.provider),
    )
    predictor = Predictor.from_path(model, cfg)
    local_out = work / f"{label}-local.csv"
    rates = []
    for _ in range(args.repeats):
        res = scan_folder(predictor, ScanConfig(folder, output=local_out, overwrite=True))
        rates.append(res.images_per_second)
    rows: list[dict[str, Any]] = [
        {
            "model": label,
            "engine": "local",
            "images": res.found,
            "provider": res.provider,
            "threads": args.threads or os.cpu_count(),
            "decode_workers": cfg.decode_workers,
            "batch_size": args.batch_size,
            "images_per_s": round(max(rates), 2),
            "runs": [round(r, 2) for r in rates],
        }
    ]
    local_rows = _rows(local_out)
    for read in args.read.split(","):
        ray_out = work / f"{label}-ray-{read}.csv"
        ray_cfg = RayScanConfig(
            model=model,
            source=folder,
            predictor=PredictorConfig(
                session=SessionConfig(provider=args.provider),
                batch_size=args.batch_size,
                decode_workers=args.workers or 1,
            ),
            output=ray_out,
            overwrite=True,
            address=args.address,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            read=read,  # type: ignore[arg-type]
        )
        rates, seconds, first = [], [], []
        for _ in range(args.repeats):
            rres = ray_scan(ray_cfg)
            rates.append(rres.scan.images_per_second)
            seconds.append(rres.scan.seconds)
            first.append(rres.first_rows_seconds)
        same = _rows(ray_out) == local_rows
        rows.append(
            {
                "model": label,
                "engine": "ray",
                "images": rres.scan.found,
                "provider": rres.scan.provider,
                "read": rres.read,
                "actors": rres.actors,
                "cpus_per_actor": rres.cpus_per_actor,
                "gpus_per_actor": rres.gpus_per_actor,
                "nodes": rres.nodes,
                "batch_size": args.batch_size,
                "images_per_s": round(max(rates), 2),
                "runs": [round(r, 2) for r in rates],
                "seconds": [round(s, 2) for s in seconds],
                "first_rows_s": [round(s, 2) for s in first],
                "rows_equal_local": same,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--n", type=int, default=451, help="images to scan (the first N in scan order)")
    ap.add_argument("--model", type=Path, action="append", default=[], help="a cxr ONNX model (repeatable)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny decode-dominated model")
    ap.add_argument("--size", type=int, default=224, help="input size of the tiny model")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="local scan: onnxruntime threads (default all)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (local default: automatic)")
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--address", default=None, help="Ray cluster (default: a local instance, --ray-cpus)")
    ap.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance (default all)")
    ap.add_argument("--actors", type=int, default=None, help="actor pool size (default: fill the cluster)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--read", default="path,bytes", help="Ray read modes to time, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = ap.parse_args()

    if not args.images.is_dir():
        raise SystemExit(f"{args.images} not found: pass --images FOLDER")
    import ray

    from cxr.runtime.ray.cluster import connect, disconnect

    files = find_images(args.images, recursive=True)[: args.n]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-ray-") as tmp:
        work = Path(tmp)
        folder = work / "images"
        folder.mkdir()
        for i, src in enumerate(files):  # a flat folder of the first N images, same order
            (folder / f"{i:05d}{src.suffix}").symlink_to(src.resolve())
        models: list[tuple[str, Path]] = []
        if not args.no_tiny:
            from tests.onnx_factory import make_fused_model

            models.append((f"tiny-{args.size}", make_fused_model(work / "tiny.onnx", size=args.size)))
        models += [(p.stem, p) for p in args.model]
        t0 = time.perf_counter()
        conn = connect(args.address, local_cpus=args.ray_cpus)  # once: scans below reuse it
        startup = time.perf_counter() - t0
        print(f"ray {ray.__version__}: {conn.cpus:g} CPUs, {conn.gpus:g} GPUs, {conn.nodes} node(s), "
              f"ready in {startup:.1f} s", file=sys.stderr)  # fmt: skip
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        try:
            for label, path in models:
                for row in bench_model(path, label, folder, args, work):
                    row["ray_startup_s"] = round(startup, 2)
                    rows.append(row)
                    extra = (
                        f" (first rows after {min(row['first_rows_s']):.1f} s; read={row['read']} "
                        f"actors={row['actors']} equal={row['rows_equal_local']})"
                        if row["engine"] == "ray"
                        else ""
                    )
                    print(
                        f"{label:>16} {row['engine']:>5}: {row['images_per_s']:8.1f} img/s{extra}",
                        file=sys.stderr,
                    )
        finally:
            disconnect(conn)
    text = json.dumps({"rows": rows, "ray": ray.__version__, "cpus": os.cpu_count()}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not all(r.get("rows_equal_local", True) for r in rows):
        raise SystemExit("Ray rows differ from the local scan's rows")


if __name__ == "__main__":
    main()
