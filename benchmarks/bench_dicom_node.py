"""`cxr listen` on this host: instances per minute through the node and the time from C-STORE received to
SR stored in the PACS, beside the model's pure inference time on the same files.

Takes: a model (``--model``; default: a tiny cxr-shaped fused model built here, for a smoke run only) and
DICOM files (``--files``, default ../shared/data/dicom plus two tiny DX files). Starts Orthanc (the PACS) on
loopback and the node in this process, then sends with dcmtk's storescu, each file copied under fresh UIDs:
- latency: ``--n`` instances one at a time (the next is sent once the previous one's SR and SC are stored),
  time from the node's C-STORE received to Orthanc's success answer for the SR and SC (the spool records
  ``received_at`` and ``sent_at``), p50 and p90; the node's own share is latency minus pure inference;
- throughput: ``--n`` instances in one storescu run, instances per minute from the first received to the
  last stored;
- pure inference: ``Predictor.predict([file])`` on the same files (decode + resize + inference), p50;
- where the node's time goes: predict stage (received -> SR and SC in the spool: inference, the picture,
  the SR/SC, fsync) and send stage (spooled -> the PACS's success answer), p50.
Prints one Markdown row (and the header); ``--json`` writes the row as JSON. Needs Orthanc and dcmtk.

    python benchmarks/bench_dicom_node.py --model runs/paper/fused/ensemble.onnx --n 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicom_harness import Orthanc, chest_dx, free_port, missing_tools, spool_counts, storescu, wait_for  # noqa: E402

DEFAULT_FILES = REPO.parent / "shared" / "data" / "dicom"
HEADER = (
    "| host | model | files | n | inference p50 ms | C-STORE -> SR stored p50 / p90 ms | node share p50 ms "
    "| predict stage p50 ms | send stage p50 ms | instances/min |\n|---|---|---|---|---|---|---|---|---|---|"
)


def fresh_copies(files: list[Path], n: int, folder: Path, tag: str) -> list[Path]:
    """``n`` copies of ``files`` (round robin), each with new SOP Instance UIDs (same pixels, same study)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ds = pydicom.dcmread(files[i % len(files)], force=True)
        uid = generate_uid(entropy_srcs=["bench", tag, str(i), str(time.time_ns())])
        ds.SOPInstanceUID = uid
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{tag}{i:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def latencies_ms(spool: Path, uids: list[str]) -> dict[str, list[float]]:
    """Per instance: total (received -> stored), predict (received -> SR/SC spooled), send (-> stored)."""
    out: dict[str, list[float]] = {"total": [], "predict": [], "send": []}
    for uid in uids:
        rec = json.loads((spool / "sent" / uid / "record.json").read_text())
        received, predicted, sent = (_t(rec[k]) for k in ("received_at", "predicted_at", "sent_at"))
        out["total"].append((sent - received) * 1000)
        out["predict"].append((predicted - received) * 1000)
        out["send"].append((sent - predicted) * 1000)
    return out


def uid_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from cxr.dicom.forward import Backoff, parse_destination
    from cxr.dicom.node import DicomNode, NodeConfig
    from cxr.runtime import Predictor, PredictorConfig

    model = args.model
    if model is None:
        from tests.onnx_factory import make_fused_model

        model = make_fused_model(work / "tiny.onnx")
    files = sorted(args.files.glob("*.dcm")) if args.files.is_dir() else []
    files += [chest_dx(work / "dx" / f"dx{i}.dcm", seed=i, size=512) for i in range(2)]

    predictor = Predictor.from_path(model, PredictorConfig(batch_size=1), threads=args.threads)
    predictor.predict(files[:1])  # warm-up
    infer = []
    for f in files * max(1, args.n // len(files)):
        t0 = time.perf_counter()
        predictor.predict([f])
        infer.append((time.perf_counter() - t0) * 1000)

    node_port = free_port()
    orthanc = Orthanc(work / "orthanc", node_port).start()
    spool = work / "spool"
    cfg = NodeConfig(
        model=Path(model),
        forward=parse_destination(orthanc.destination),
        spool=spool,
        port=node_port,
        backoff=Backoff(0.2, 1.0, 60.0),
        threads=args.threads,
    )
    node = DicomNode(cfg, predictor=predictor).start()
    try:
        sequential = fresh_copies(files, args.n, work / "seq", "s")
        for i, f in enumerate(sequential):
            storescu(node.port, [f])
            wait_for(lambda i=i: spool_counts(spool)["sent"] >= i + 1, 120, f"instance {i} stored")
        lat = latencies_ms(spool, [uid_of(f) for f in sequential])
        burst = fresh_copies(files, args.n, work / "burst", "b")
        storescu(node.port, burst)
        wait_for(lambda: spool_counts(spool)["sent"] >= 2 * args.n, 600, "the burst stored")
        recs = [json.loads((spool / "sent" / uid_of(f) / "record.json").read_text()) for f in burst]
        span = max(_t(r["sent_at"]) for r in recs) - min(_t(r["received_at"]) for r in recs)
        failed = spool_counts(spool)["failed"]
    finally:
        node.stop()
        orthanc.stop()
    p50_inf = float(np.percentile(infer, 50))
    return {
        "host": f"{platform.node()} ({platform.machine()}, threads {args.threads or 'all'})",
        "model": Path(model).name,
        "files": len(files),
        "n": args.n,
        "inference_p50_ms": round(p50_inf, 1),
        "latency_p50_ms": round(float(np.percentile(lat["total"], 50)), 1),
        "latency_p90_ms": round(float(np.percentile(lat["total"], 90)), 1),
        "node_share_p50_ms": round(float(np.percentile(lat["total"], 50)) - p50_inf, 1),
        "predict_stage_p50_ms": round(float(np.percentile(lat["predict"], 50)), 1),
        "send_stage_p50_ms": round(float(np.percentile(lat["send"], 50)), 1),
        "instances_per_min": round(60 * args.n / span, 1),
        "failed": failed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="fused cxr model (default: a tiny one, smoke only)"
    )
    ap.add_argument("--files", type=Path, default=DEFAULT_FILES, help="folder of DICOM files")
    ap.add_argument("--n", type=int, default=12, help="instances per phase (latency, throughput)")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the row as JSON here")
    args = ap.parse_args()
    if missing_tools():
        print(f"error: needs {', '.join(missing_tools())} (apt-get install orthanc dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dicom-") as tmp:
        row = run(args, Path(tmp))
    print(HEADER)
    print(
        f"| {row['host']} | {row['model']} | {row['files']} | {row['n']} | {row['inference_p50_ms']} "
        f"| {row['latency_p50_ms']} / {row['latency_p90_ms']} | {row['node_share_p50_ms']} "
        f"| {row['predict_stage_p50_ms']} | {row['send_stage_p50_ms']} | {row['instances_per_min']} |"
    )
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0 if row["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
