"""The fused graph's per-member resize reproduces Pillow's antialiased bilinear resize bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from cxr.fuse.resize import pil_coefficients, probe_order, resize_like_graph, resize_nodes  # noqa: E402
from cxr.imaging.preprocess import resize_gray  # noqa: E402
from cxr.spec import PreprocessSpec  # noqa: E402

SIZES = [((299, 299), (224, 224)), ((256, 256), (224, 224)), ((40, 40), (32, 32)), ((32, 32), (40, 40)),
         ((64, 48), (33, 57)), ((48, 64), (57, 33)), ((224, 224), (64, 64))]  # fmt: skip


def _pil(batch: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    spec = PreprocessSpec(input_size=out_hw)
    return np.stack([resize_gray(img[0], spec) for img in batch])[:, None]


@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES)
def test_numpy_twin_equals_pillow(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, 1, *in_hw), dtype=np.uint8)
    order, misses = probe_order(in_hw, out_hw)
    assert misses == 0
    np.testing.assert_array_equal(resize_like_graph(batch, out_hw, order), _pil(batch, out_hw))


@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES[2:])
def test_graph_nodes_equal_pillow(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    order, _ = probe_order(in_hw, out_hw)
    nodes, inits = resize_nodes("x", "y", in_hw, out_hw, "r/", order)
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, *in_hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, *out_hw])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).integers(0, 256, size=(2, 1, *in_hw), dtype=np.uint8)
    (out,) = sess.run(None, {"x": batch.astype(np.float32)})
    np.testing.assert_array_equal(out, _pil(batch, out_hw).astype(np.float32))


def test_coefficients_are_normalised_fixed_point() -> None:
    w = pil_coefficients(299, 224)
    assert w.shape == (224, 299)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(w * 2**22, np.round(w * 2**22))  # 22-bit fixed point, as Pillow
    assert not w.flags.writeable
