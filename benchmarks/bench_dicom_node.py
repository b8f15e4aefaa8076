"""`cxr listen` on this host: the time the node adds to the model's pure inference per image, its throughput,
and the time from C-STORE received to SR stored in the PACS.

Takes: a model (``--model``; default: a tiny cxr-shaped fused model built here, for a smoke run only) and
DICOM files (``--files``, default ../shared/data/dicom plus two tiny DX files). The node runs what
`cxr listen` runs: the model's heatmap twin when one lies beside it (``runtime.locate``), else the model.
- pure inference: ``Predictor.explain(file)`` (decode, resize, one run of the graph, with the heatmap
  output for the twin) on the same files, p50, for the graph the node runs and for the plain model;
- stages (in process, no network): per instance, timed with ``perf_counter``: the model (explain), then
  each later step one by one (the picture, the SR, the SC, encoding both), then the same instance the node's
  own way (the model again, then ``Worker``'s results step: the picture, SR, SC and the commit to the spool
  with fsync), p50; "node adds (paired)" is the node's way minus the model alone in the same iteration
  (paired, so slow drifts of the host cancel; as noisy as the model's own time where that varies);
- latency: Orthanc (the PACS) on loopback and the node in this process; ``--n`` instances sent one at a
  time with dcmtk's storescu (each a copy under fresh UIDs; the next is sent once the previous is stored):
  received -> results committed to the spool ("node per image"), split at the model's end into the model
  stage (reading the spooled file, explain) and the results stage (what the node adds: the picture, SR, SC,
  commit), and received -> the PACS's success answer for the SR and SC, p50 and p90;
- throughput: ``--n`` instances in one storescu run: instances per minute from the first received to the
  last committed (the node) and to the last stored (with the PACS on the same cores).
Prints Markdown tables; ``--json`` writes the row as JSON. Needs Orthanc and dcmtk.

    python benchmarks/bench_dicom_node.py --model runs/paper/fused/ensemble.onnx --n 12 --threads 2
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
STAGES = ("model", "picture", "sr", "sc", "encode")
STAGE_COLUMNS = (*STAGES, "steps", "results", "results_cpu", "node", "node_adds")


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
    """Per instance: total (received -> stored), predict (received -> SR/SC committed: the node per image),
    model (received -> inferred), results (inferred -> committed), send (committed -> stored). Committed: when
    the send thread took the instance (``send_started_at``; it takes each one once its commit, fsync included,
    is done, and waits for nothing else when instances come one at a time)."""
    out: dict[str, list[float]] = {"total": [], "predict": [], "model": [], "results": [], "send": []}
    for uid in uids:
        rec = json.loads((spool / "sent" / uid / "record.json").read_text())
        received, inferred, committed, sent = (
            _t(rec[k]) for k in ("received_at", "inferred_at", "send_started_at", "sent_at")
        )
        out["total"].append((sent - received) * 1000)
        out["predict"].append((committed - received) * 1000)
        out["model"].append((inferred - received) * 1000)
        out["results"].append((committed - inferred) * 1000)
        out["send"].append((sent - committed) * 1000)
    return out


def uid_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def p50(values: list[float]) -> float:
    return round(float(np.percentile(values, 50)), 1)


def inference_ms(predictor: Any, files: list[Path], n: int) -> list[float]:
    """Pure inference per file: ``explain`` (decode, resize, one run; the heatmap output when the graph has it)."""
    predictor.explain(files[0])  # warm-up
    out = []
    for f in files * max(1, n // len(files)):
        t0 = time.perf_counter()
        predictor.explain(f)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stage_ms(predictor: Any, files: list[Path], n: int, work: Path) -> dict[str, list[float]]:
    """Per instance, in process: the model (``explain``), then each step the node takes after it, one after
    another (picture, SR, SC, encoding both); then, on the same instance, the node's own way (the model, then
    ``Worker``'s results step: all of these and the commit to the spool, fsync included), timed as a whole;
    "node adds" is that minus the same iteration's model time."""
    from cxr.dicom import ModelIdentity
    from cxr.dicom.forward import Backoff, parse_destination
    from cxr.dicom.node import cxr_responder
    from cxr.dicom.sc import build_sc
    from cxr.dicom.spool import Spool
    from cxr.dicom.sr import build_sr
    from cxr.dicom.worker import Worker, _Predicted, now, part10, secondary_capture_picture
    from cxr.imaging.dicom import read_dataset

    responder, sha = cxr_responder(predictor)
    model = ModelIdentity.from_predictor(predictor)
    spool = Spool(work / "stages").open()
    dest = parse_destination("NOWHERE@127.0.0.1:9")  # never sent: the results step only queues them
    worker = Worker(spool, predictor, responder, dest, calling_ae="CXR", backoff=Backoff(), model_sha256=sha)
    out: dict[str, list[float]] = {k: [] for k in STAGE_COLUMNS}
    todo = files * max(1, n // len(files))
    for i, f in enumerate([todo[0], *todo]):  # the first one warms up
        data = f.read_bytes()
        t = [time.perf_counter()]
        one = predictor.explain(data, str(f))
        t.append(time.perf_counter())
        rgb = secondary_capture_picture(one.image, one.heatmap, one.prediction)
        t.append(time.perf_counter())
        source = read_dataset(data, str(f))
        sr = build_sr(source, one.prediction, model)
        t.append(time.perf_counter())
        sc = build_sc(source, rgb, model, name=str(f))
        t.append(time.perf_counter())
        part10(sr), part10(sc)
        t.append(time.perf_counter())
        uid = f"1.2.826.0.1.3680043.10.1.{i}"
        spool.receive(uid, data, {})
        n0 = time.perf_counter()
        again = predictor.explain(data, str(f))
        r0, c0 = time.perf_counter(), time.thread_time()
        worker._respond_one(_Predicted(uid, data, again, None, now()))
        r1, c1 = time.perf_counter(), time.thread_time()
        if i == 0:
            continue
        for k, a, b in zip(STAGES, t, t[1:], strict=False):
            out[k].append((b - a) * 1000)
        out["steps"].append((t[-1] - t[1]) * 1000)
        out["results"].append((r1 - r0) * 1000)
        out["results_cpu"].append((c1 - c0) * 1000)
        out["node"].append((r1 - n0) * 1000)
        out["node_adds"].append((r1 - n0 - (t[1] - t[0])) * 1000)
    worker.stop(1.0)
    spool.close()
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from cxr.dicom.forward import Backoff, parse_destination
    from cxr.dicom.node import DicomNode, NodeConfig, open_predictor
    from cxr.runtime import Predictor, PredictorConfig, SessionConfig

    model = args.model
    if model is None:
        from tests.onnx_factory import make_fused_model

        model = make_fused_model(work / "tiny.onnx")
    files = sorted(args.files.glob("*.dcm")) if args.files.is_dir() else []
    files += [chest_dx(work / "dx" / f"dx{i}.dcm", seed=i, size=512) for i in range(2)]

    node_port = free_port()
    orthanc = Orthanc(work / "orthanc", node_port).start()
    try:  # Orthanc is stopped whatever fails after it started
        spool = work / "spool"
        cfg = NodeConfig(
            model=Path(model),
            forward=parse_destination(orthanc.destination),
            spool=spool,
            port=node_port,
            backoff=Backoff(0.2, 1.0, 60.0),
            threads=args.threads,
            provider=args.provider,
            precision=args.precision,
        )
        # what `cxr listen` runs: the heatmap twin when it is beside the model
        predictor = open_predictor(cfg)
        session = SessionConfig(provider=args.provider, threads=args.threads, precision=args.precision)
        plain = Predictor.from_path(model, PredictorConfig(session=session, batch_size=1))
        infer = inference_ms(predictor, files, args.n)
        infer_plain = inference_ms(plain, files, args.n)
        del plain
        stages = stage_ms(predictor, files, args.n, work)
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
            first = min(_t(r["received_at"]) for r in recs)
            span_node = max(_t(r["send_started_at"]) for r in recs) - first
            span_pacs = max(_t(r["sent_at"]) for r in recs) - first
            failed = spool_counts(spool)["failed"]
        finally:
            node.stop()
    finally:
        orthanc.stop()
    pure = p50(infer)
    node_ms = p50(lat["predict"])
    per_instance = 1000 * span_node / args.n
    return {
        "host": f"{platform.node()} ({platform.machine()}, threads {args.threads or 'all'})",
        "runs_as": f"{args.provider} provider, precision {args.precision}",
        "model": Path(predictor.model_path).name,
        "files": len(files),
        "n": args.n,
        "inference_p50_ms": pure,
        "inference_plain_p50_ms": p50(infer_plain),
        "stages_p50_ms": {k: p50(v) for k, v in stages.items()},
        "stages_min_ms": {k: round(min(v), 1) for k, v in stages.items()},
        "inference_min_ms": round(min(infer), 1),
        "node_per_image_p50_ms": node_ms,
        "model_stage_p50_ms": p50(lat["model"]),
        "results_stage_p50_ms": p50(lat["results"]),
        "node_adds_pct": round(100 * p50(lat["results"]) / pure, 1),
        "node_adds_paired_pct": round(100 * p50(stages["node_adds"]) / p50(stages["model"]), 1),
        "node_minus_pure_p50_ms": round(node_ms - pure, 1),
        "latency_p50_ms": p50(lat["total"]),
        "latency_p90_ms": round(float(np.percentile(lat["total"], 90)), 1),
        "send_stage_p50_ms": p50(lat["send"]),
        "burst_ms_per_instance": round(per_instance, 1),
        "burst_adds_pct": round(100 * (per_instance - pure) / pure, 1),
        "instances_per_min_node": round(60 * args.n / span_node, 1),
        "instances_per_min_pacs": round(60 * args.n / span_pacs, 1),
        "failed": failed,
    }


def table(row: dict[str, Any]) -> str:
    """The row as the Markdown tables of benchmarks/README.md."""
    return "\n".join(
        [
            f"host {row['host']}, model {row['model']} ({row['runs_as']}), {row['files']} files, n {row['n']}, "
            f"failed {row['failed']}",
            "",
            "| stage (in process) | " + " | ".join(STAGES) + " | steps after the model, one by one "
            "| results step as the node runs it (its CPU) | node per image (its own way) | node adds (paired) |",
            "|---" * (len(STAGES) + 5) + "|",
            *(
                f"| {what} ms | " + " | ".join(str(row[key][k]) for k in (*STAGES, "steps")) + " | "
                f"{row[key]['results']} ({row[key]['results_cpu']}) | {row[key]['node']} "
                f"| {row[key]['node_adds']} |"
                for what, key in (("p50", "stages_p50_ms"), ("min", "stages_min_ms"))
            ),
            "",
            "| pure inference p50 / min (plain model p50) | node per image p50 (model stage, results stage) "
            "| results stage / pure | node adds (paired, in process) "
            "| burst ms/instance (adds) | C-STORE -> SR stored p50 / p90 | send stage p50 "
            "| instances/min node / with PACS |",
            "|---|---|---|---|---|---|---|---|",
            f"| {row['inference_p50_ms']} / {row['inference_min_ms']} ({row['inference_plain_p50_ms']}) ms "
            f"| {row['node_per_image_p50_ms']} ({row['model_stage_p50_ms']}, {row['results_stage_p50_ms']}) ms "
            f"| {row['results_stage_p50_ms']} ms ({row['node_adds_pct']}%) "
            f"| {row['stages_p50_ms']['node_adds']} ms ({row['node_adds_paired_pct']}%) "
            f"| {row['burst_ms_per_instance']} ({row['burst_adds_pct']}%) "
            f"| {row['latency_p50_ms']} / {row['latency_p90_ms']} ms | {row['send_stage_p50_ms']} ms "
            f"| {row['instances_per_min_node']} / {row['instances_per_min_pacs']} |",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="fused cxr model (default: a tiny one, smoke only)"
    )
    ap.add_argument("--files", type=Path, default=DEFAULT_FILES, help="folder of DICOM files")
    ap.add_argument("--n", type=int, default=12, help="instances per phase (latency, throughput)")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    ap.add_argument("--provider", default="auto", help="as `cxr listen --provider` (auto, cpu, openvino)")
    ap.add_argument(
        "--precision", default="auto", help="as `cxr listen --precision` (auto, fp32, bf16, int8)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the row as JSON here")
    args = ap.parse_args()
    if missing_tools():
        print(f"error: needs {', '.join(missing_tools())} (apt-get install orthanc dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dicom-") as tmp:
        row = run(args, Path(tmp))
    print(table(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0 if row["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
