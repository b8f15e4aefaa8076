"""How much Python work on another thread delays the model: the cost of overlapping the node's results with
inference (the results of one instance are made while the model runs on the next).

Takes a member or fused ONNX file (one static input) and a DICOM file; runs it in OpenVINO (FP32, ``--threads``)
alone and with the node's document building (``cxr.dicom.results.result_documents``: the SR and the SC
without pixels, Python under the GIL) started on a second thread at the same moment, alternately, ``--n``
times. Prints the model's p50 alone and beside, the paired difference (p50, mean +- its standard error) and
the documents' CPU time: a difference as large as that CPU time means the model got nothing back from the
overlap.

    python benchmarks/beside_model.py runs/paper/onnx/densenet121.onnx --n 40
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument(
        "--dicom", type=Path, default=REPO.parent / "shared" / "data" / "dicom" / "nih_cxr14_dx_chest.dcm"
    )
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import openvino as ov

    from cxr.dicom.results import result_documents
    from tests.dicom_factory import ASSESSABLE, MODEL

    compiled = ov.Core().compile_model(
        str(a.model), "CPU", {"INFERENCE_NUM_THREADS": a.threads, "INFERENCE_PRECISION_HINT": "f32"}
    )
    request = compiled.create_infer_request()
    shape = [d.get_length() if d.is_static else 1 for d in compiled.input(0).get_partial_shape()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    data, pred = a.dicom.read_bytes(), replace(ASSESSABLE, source=a.dicom.name)
    cpu: list[float] = []

    def documents() -> None:
        c0 = time.thread_time()
        result_documents(data, pred, MODEL)
        cpu.append((time.thread_time() - c0) * 1000)

    for _ in range(5):
        request.infer({0: x})
    documents()
    alone, beside = [], []
    for _ in range(a.n):
        t0 = time.perf_counter()
        request.infer({0: x})
        alone.append((time.perf_counter() - t0) * 1000)
        thread = threading.Thread(target=documents)
        t0 = time.perf_counter()
        thread.start()
        request.infer({0: x})
        beside.append((time.perf_counter() - t0) * 1000)
        thread.join()
    diff = np.array(beside) - np.array(alone)
    print(
        f"{a.model.name}, {a.threads} threads, n {a.n}: model alone p50 {np.median(alone):.1f} ms, beside the "
        f"documents {np.median(beside):.1f} ms; paired difference p50 {np.median(diff):.1f} ms, mean "
        f"{diff.mean():.1f} +- {diff.std() / np.sqrt(len(diff)):.1f} ms; the documents' CPU p50 "
        f"{np.median(cpu[1:]):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
