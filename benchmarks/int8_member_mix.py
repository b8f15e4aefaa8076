"""How many fused answers INT8 member files would change, before any fuse: takes a finished run (its
``onnx/<name>.onnx``, ``stack/meta.onnx`` and ``manifest.csv``) and NAME=INT8_FILE pairs; prints, per split (test,
train+val), each member's mean and max total-variation change of its class probabilities (INT8 file vs FP32
file, both run as members on onnxruntime) and the meta-learner's top-1 flips with all given INT8 files, and
with each alone. A proxy for ``cxr fuse``'s verdict (which runs the fused graph, preprocessing in the graph).

    python benchmarks/int8_member_mix.py runs/rehearse densenet121=OUT/onnx/densenet121.int8.onnx \\
        resnetv2_50=OUT/onnx/resnetv2_50.int8.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr.data.manifest import load_manifest  # noqa: E402
from cxr.export.onnx_files import read_metadata  # noqa: E402
from cxr.imaging.decode import decode_gray  # noqa: E402
from cxr.imaging.preprocess import to_model_input  # noqa: E402
from cxr.spec import INPUT_FEATURES, INPUT_MEMBER, OUTPUT_LABEL  # noqa: E402


def probabilities(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {INPUT_MEMBER: x[i : i + 8]})[0] for i in range(0, len(x), 8)])
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("int8", nargs="+", help="NAME=INT8_FILE")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    int8 = {k: Path(v) for k, v in (a.split("=", 1) for a in args.int8)}
    manifest = load_manifest(args.run / "manifest.csv", check_files=False)
    meta = ort.InferenceSession(str(args.run / "stack" / "meta.onnx"), providers=["CPUExecutionProvider"])
    order = json.loads((args.run / "stack" / "meta.json").read_text())["member_order"]

    def labels(p: np.ndarray) -> np.ndarray:
        return meta.run([OUTPUT_LABEL], {INPUT_FEATURES: p.reshape(len(p), -1).astype(np.float64)})[0]

    for split, rows in (
        ("test", manifest.split("test")),
        ("train+val", manifest.split("train") + manifest.split("val")),
    ):
        grays = [decode_gray(manifest.abspath(r)) for r in rows]
        fp32, mixed = [], []
        for name in order:
            src = args.run / "onnx" / f"{name}.onnx"
            x = to_model_input(grays, read_metadata(src).preprocess, normalized=True).astype(np.float32)
            a = probabilities(src, x, args.threads)
            b = probabilities(int8[name], x, args.threads) if name in int8 else a
            change = 0.5 * np.abs(a - b).sum(axis=1)
            print(f"{split} {name}: mean change {change.mean():.4f}, max {change.max():.4f}")  # noqa: T201
            fp32.append(a)
            mixed.append(b)
        a_all, b_all = np.stack(fp32, axis=1), np.stack(mixed, axis=1)
        want = labels(a_all)
        print(f"{split}: all given INT8 -> {int(np.sum(labels(b_all) != want))} of {len(want)} flip")  # noqa: T201
        for j, name in enumerate(order):
            if name in int8:
                one = a_all.copy()
                one[:, j] = b_all[:, j]
                print(f"  {name} alone: {int(np.sum(labels(one) != want))} flip")  # noqa: T201


if __name__ == "__main__":
    main()
