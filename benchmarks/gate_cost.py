"""Takes two fused models (with and without the out-of-distribution score) and a DICOM; makes the gate's costs.

Times, interleaved in one process so that both see the same machine state: the fused graph's batch-1 and
batch-8 latency with and without ``ood_score`` (onnxruntime, CPU, random uint8 images), the runtime's
grey-range rule per image (numpy percentiles of a 224x224 image) and the DICOM header rules per file.
Prints one Markdown row per measurement (p50 over the calls).

Usage: python benchmarks/gate_cost.py runs/rehearse/ensemble.onnx /tmp/noood/ensemble.onnx FILE.dcm
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxr.imaging.gate import grey_range_reason
from cxr.runtime.assess import header_reasons
from cxr.session import cpu_session


def p50_ms(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    with_ood, without, dicom = Path(argv[0]), Path(argv[1]), Path(argv[2])
    sessions = {"with ood_score": cpu_session(with_ood), "without": cpu_session(without)}
    size = sessions["without"].get_inputs()[0].shape[2]
    rng = np.random.default_rng(0)
    print("| measurement | p50 ms |")
    print("|---|---|")
    for batch in (1, 8):
        x = rng.integers(0, 256, (batch, 1, size, size), dtype=np.uint8)
        results: dict[str, list[float]] = {k: [] for k in sessions}
        for sess in sessions.values():
            sess.run(None, {"image": x})  # warm-up
        for _ in range(10):  # interleaved rounds of 3 calls each
            for name, sess in sessions.items():
                results[name].append(p50_ms(lambda s=sess, x=x: s.run(None, {"image": x}), 3))
        for name, values in results.items():
            print(f"| fused graph {name}, batch {batch} | {statistics.median(values):.1f} |")
    gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
    print(
        f"| grey-range rule, one {size}x{size} image | {p50_ms(lambda: grey_range_reason(gray), 200):.3f} |"
    )
    print(f"| DICOM header rules, {dicom.name} | {p50_ms(lambda: header_reasons(dicom), 50):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
