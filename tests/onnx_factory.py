"""Tiny cxr-shaped ONNX graphs written with onnx.helper, for runtime, bench and API tests.

``make_fused_model``: input ``image`` uint8 [N, 1, S, S] -> per-member linear maps of the pixels -> softmax
-> ``member_probabilities`` [N, M, K] -> mean -> ``probabilities`` [N, K] and ``label`` [N] (int64), with
``input_format="uint8_gray"`` metadata like a real fused ensemble. ``make_member_model``: input ``input``
float32 [N, 3, S, S] -> ``logits`` [N, K], like an exported member. Weights are seeded and small, so
different images give different, deterministic probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.labels import CLASSES
from cxr.spec import ModelMetadata, PreprocessSpec

OPSET = 17


def _save(model: onnx.ModelProto, path: Path, meta: ModelMetadata | None) -> Path:
    if meta is not None:
        for k, v in meta.to_props().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_fused_model(
    path: Path,
    size: int = 32,
    members: Sequence[str] = ("alpha", "beta"),
    classes: Sequence[str] = CLASSES,
    seed: int = 0,
    with_metadata: bool = True,
    card_extra: Mapping[str, Any] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    k, m, d = len(classes), len(members), size * size
    inits = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "c255"),
        numpy_helper.from_array(np.array([-1, d], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_f", "c255"], ["x_s"]),
        helper.make_node("Reshape", ["x_s", "flat_shape"], ["x_flat"]),
    ]
    member_outs = []
    for name in members:
        w = (rng.standard_normal((d, k)) * (4.0 / np.sqrt(d))).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"{name}/w"), numpy_helper.from_array(b, f"{name}/b")]
        nodes += [
            helper.make_node("Gemm", ["x_flat", f"{name}/w", f"{name}/b"], [f"{name}/logits"]),
            helper.make_node("Softmax", [f"{name}/logits"], [f"{name}/p"], axis=1),
            helper.make_node("Unsqueeze", [f"{name}/p", "axis1"], [f"{name}/p3"]),
        ]
        member_outs.append(f"{name}/p3")
    nodes += [
        helper.make_node("Concat", member_outs, ["member_probabilities"], axis=1),
        helper.make_node("ReduceMean", ["member_probabilities"], ["probabilities"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_fused",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("member_probabilities", TensorProto.FLOAT, ["batch", m, k]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cxr-tests"
    )
    meta = ModelMetadata(
        classes=tuple(classes),
        preprocess=PreprocessSpec.square(size),
        input_format="uint8_gray",
        card={
            "kind": "ensemble",
            "member_order": list(members),
            "members": [{"name": n, "timm_name": "test"} for n in members],
            "flops_per_image": float(2 * d * k * m),
            "precision": "fp32",
            "seed": seed,
            **dict(card_extra or {}),
        },
    )
    return _save(model, path, meta if with_metadata else None)


def make_member_model(
    path: Path, size: int = 32, classes: Sequence[str] = CLASSES, seed: int = 0, with_metadata: bool = True
) -> Path:
    rng = np.random.default_rng(seed)
    k, d = len(classes), size * size
    w = (rng.standard_normal((d, k)) * (0.5 / np.sqrt(d))).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.zeros(k, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1, d], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["gray", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cxr-tests"
    )
    meta = ModelMetadata(
        classes=tuple(classes),
        preprocess=PreprocessSpec.square(size),
        input_format="float_normalized",
        card={"kind": "member", "name": "tiny", "timm_name": "test", "flops_per_image": float(2 * d * k)},
    )
    return _save(model, path, meta if with_metadata else None)


def write_gray_pngs(folder: Path, n: int, size: int = 48, seed: int = 0) -> list[Path]:
    """Write ``n`` random-ish 8-bit grayscale PNGs (smooth gradients plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        a, b = rng.uniform(-1, 1, 2)
        img = 128 + 80 * (a * xx + b * yy) + rng.normal(0, 20, (size, size))
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(p)
        out.append(p)
    return out
