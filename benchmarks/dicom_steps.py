"""The CPU time of each step the DICOM node takes after the model, for one cxr tree (before/after a change).

Takes: a model (``--model``, the graph the node runs: the heatmap twin when there is one) and DICOM files
(``--files``, default ../shared/data/dicom). Runs the model once per file, then ``--repeats`` times per file:
the secondary capture's picture, parsing the source, the SR, the SC, encoding each, and the spool commit;
prints the p50 of each step's thread CPU time (``time.thread_time``: what a busy machine disturbs least) and
the commit's wall time (it waits on fsync). Uses only what every cxr tree with ``cxr listen`` has, so the
same file measures an older commit too:

    PYTHONPATH=/path/to/old/tree python benchmarks/dicom_steps.py --model runs/rehearse/ensemble.heatmaps.onnx
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("picture", "parse", "sr", "sc", "encode_sr", "encode_sc", "commit")


def measure(model: Path, files: list[Path], repeats: int, work: Path) -> dict[str, float]:
    from cxr.dicom import ModelIdentity
    from cxr.dicom.sc import build_sc
    from cxr.dicom.spool import Spool
    from cxr.dicom.sr import build_sr
    from cxr.dicom.worker import part10, secondary_capture_picture
    from cxr.imaging.dicom import read_dataset
    from cxr.runtime import Predictor, PredictorConfig

    predictor = Predictor.from_path(model, PredictorConfig(batch_size=1), threads=2)
    identity = ModelIdentity.from_predictor(predictor)
    explained = [(f.read_bytes(), predictor.explain(f.read_bytes(), str(f))) for f in files]
    spool = Spool(work / "spool").open()
    cpu: dict[str, list[float]] = {k: [] for k in STEPS}
    commit_wall: list[float] = []
    for rep in range(repeats + 1):  # the first round warms up
        for i, (data, one) in enumerate(explained):
            pred, image = one.prediction, one.image
            if image is None:  # not decoded: the node writes no results for it
                continue
            t = [time.thread_time()]
            rgb = secondary_capture_picture(image, one.heatmap, pred)
            t.append(time.thread_time())
            source = read_dataset(data, pred.source)
            t.append(time.thread_time())
            sr = build_sr(source, pred, identity)
            t.append(time.thread_time())
            sc = build_sc(source, rgb, identity, name=pred.source)
            t.append(time.thread_time())
            sr_bytes = part10(sr)
            t.append(time.thread_time())
            sc_bytes = part10(sc)
            t.append(time.thread_time())
            uid = f"1.2.826.0.1.3680043.10.2.{rep}.{i}"
            spool.receive(uid, data, {})
            wall = time.perf_counter()
            spool.mark_predicted(uid, {"sr.dcm": sr_bytes, "sc.dcm": sc_bytes}, {"sop_instance_uid": uid})
            t.append(time.thread_time())
            if rep:
                for k, a, b in zip(STEPS, t, t[1:], strict=False):
                    cpu[k].append((b - a) * 1000)
                commit_wall.append((time.perf_counter() - wall) * 1000)
    spool.close()
    out = {k: round(statistics.median(v), 1) for k, v in cpu.items()}
    out["total_cpu"] = round(sum(out.values()), 1)
    out["commit_wall"] = round(statistics.median(commit_wall), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--files", type=Path, default=REPO.parent / "shared" / "data" / "dicom")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    import cxr

    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="cxr-dicom-steps-") as tmp:
        warnings.simplefilter("ignore")
        row = measure(args.model, sorted(args.files.glob("*.dcm")), args.repeats, Path(tmp))
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"cxr at {Path(cxr.__file__).parent.parent}, load {load}: CPU ms p50 per step (commit also wall)")
    print(
        "| "
        + " | ".join(row)
        + " |\n"
        + "|---" * len(row)
        + "|\n| "
        + " | ".join(map(str, row.values()))
        + " |"
    )


if __name__ == "__main__":
    main()
