"""FLOPs per image from ONNX shape inference, on graphs small enough to count by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cxr.export.flops import count_flops  # noqa: E402


def graph_model(nodes: list, inits: dict[str, np.ndarray], in_shape: list, out_name: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def w(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


@pytest.mark.parametrize(
    ("nodes", "inits", "in_shape", "out", "expected"),
    [
        # Conv 3->8, 3x3, pad 1 on 16x16: 2 * (8*16*16) * (3*3*3)
        (
            [helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 1, 1, 1])],
            {"k": w(8, 3, 3, 3)},
            ["batch", 3, 16, 16],
            "y",
            2 * 8 * 16 * 16 * 27,
        ),
        # depthwise Conv (group 4), 3x3, stride 2, no pad, 9x9 -> 4x4: 2 * (4*4*4) * (1*3*3)
        (
            [helper.make_node("Conv", ["x", "k"], ["y"], group=4, strides=[2, 2])],
            {"k": w(4, 1, 3, 3)},
            ["batch", 4, 9, 9],
            "y",
            2 * 4 * 4 * 4 * 9,
        ),
        # ConvTranspose 4->2, 2x2 stride 2 on 5x5: each input element times 2*2*2 outputs
        (
            [helper.make_node("ConvTranspose", ["x", "k"], ["y"], strides=[2, 2])],
            {"k": w(4, 2, 2, 2)},
            ["batch", 4, 5, 5],
            "y",
            2 * (4 * 5 * 5) * (2 * 2 * 2),
        ),
        # Gemm [1, 64] x [64, 10]^T
        (
            [helper.make_node("Gemm", ["x", "m", "b"], ["y"], transB=1)],
            {"m": w(10, 64), "b": w(10)},
            ["batch", 64],
            "y",
            2 * 64 * 10,
        ),
        # batched MatMul [1, 7, 32] x [32, 16]
        (
            [helper.make_node("MatMul", ["x", "m"], ["y"])],
            {"m": w(32, 16)},
            ["batch", 7, 32],
            "y",
            2 * 7 * 32 * 16,
        ),
        # Relu counts nothing
        ([helper.make_node("Relu", ["x"], ["y"])], {}, ["batch", 5], "y", 0),
    ],
)
def test_counts_per_image(nodes: list, inits: dict, in_shape: list, out: str, expected: int) -> None:
    result = count_flops(graph_model(nodes, inits, in_shape, out))
    assert result.flops_per_image == expected
    assert result.unknown_shapes == ()


def test_fixed_batch_is_not_mistaken_for_one_image_and_sums_ops() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "m"], ["y"], transB=1),
    ]
    model = graph_model(nodes, {"k": w(2, 1, 3, 3), "m": w(4, 2 * 4 * 4)}, ["n", 1, 6, 6], "y")
    result = count_flops(model)
    conv, gemm = 2 * (2 * 4 * 4) * 9, 2 * 32 * 4
    assert result.flops_per_image == conv + gemm
    assert dict(result.by_op) == {"Conv": conv, "Gemm": gemm} and "Flatten" in result.uncounted


def test_external_data_model_is_counted_without_loading_weights(tmp_path: Path) -> None:
    model = graph_model(
        [helper.make_node("Conv", ["x", "k"], ["y"])], {"k": w(16, 3, 5, 5)}, ["b", 3, 20, 20], "y"
    )
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert count_flops(path).flops_per_image == 2 * (16 * 16 * 16) * (3 * 25)
