"""Which members kept in float would make a fused INT8 graph agree with FP32: takes a run directory and the
fused FP32 and INT8 graphs that `cxr fuse` made from it; prints, for every set of up to three members kept in
float, the meta-learner's top-1 agreement with FP32 on the run's train+val images (unlabelled: agreement needs
no label) and on its test split. Reads the members' probabilities from both graphs' ``member_probabilities``
output and runs the run's ``stack/meta.onnx`` on each mix; builds nothing.

    python benchmarks/int8_keep_float.py runs/rehearse runs/rehearse-int8/ensemble.onnx \\
        runs/rehearse-int8/ensemble.int8.onnx
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr.fuse.int8_check import labelled_test_images  # noqa: E402
from cxr.fuse.precision_check import real_images  # noqa: E402
from cxr.onnx_header import read_onnx_header  # noqa: E402
from cxr.spec import (  # noqa: E402
    INPUT_FEATURES,
    INPUT_IMAGE,
    META_CLASSES,
    META_PREPROCESS,
    OUTPUT_LABEL,
    OUTPUT_MEMBER_PROBABILITIES,
    PreprocessSpec,
)


def member_probabilities(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            session.run([OUTPUT_MEMBER_PROBABILITIES], {INPUT_IMAGE: x[i : i + 16]})[0]
            for i in range(0, len(x), 16)
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    props = read_onnx_header(args.fp32).metadata
    spec = PreprocessSpec.from_dict(json.loads(props[META_PREPROCESS]))
    test = labelled_test_images(args.run, spec, json.loads(props[META_CLASSES]))
    if isinstance(test, str):
        sys.exit(test)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    fp32, int8 = (
        ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (args.fp32, args.int8)
    )
    meta = ort.InferenceSession(str(args.run / "stack" / "meta.onnx"), providers=["CPUExecutionProvider"])
    names = json.loads((args.run / "stack" / "meta.json").read_text())["member_order"]

    def labels(probs: np.ndarray) -> np.ndarray:
        return meta.run([OUTPUT_LABEL], {INPUT_FEATURES: probs.reshape(len(probs), -1).astype(np.float64)})[0]

    for split, x in (("train+val", real_images(args.run, spec, 10**6, 0)), ("test", test.images)):
        a, b = member_probabilities(fp32, x), member_probabilities(int8, x)
        want = labels(a)
        print(
            f"{split}: {len(x)} images; agreement of the fused INT8 with FP32 when these members stay float"
        )
        for k in range(4):
            for keep in itertools.combinations(range(len(names)), k):
                mix = b.copy()
                mix[:, list(keep)] = a[:, list(keep)]
                got = labels(mix)
                flips = int(np.sum(got != want))
                print(
                    f"  {1 - flips / len(x):.4f} ({flips} flip) float: {', '.join(names[i] for i in keep) or '-'}"
                )


if __name__ == "__main__":
    main()
