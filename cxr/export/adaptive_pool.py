"""Adaptive average pooling the TorchScript exporter refuses, exported as two exact MatMuls.

Takes: an opset (for the scoped symbolic) or an input/output size (for the matrix). Makes: a context in
which ``aten::adaptive_avg_pool2d`` to a size that does not divide the input exports as
``P_h @ x @ P_w^T``, and ``adaptive_pool_matrix``, the [size_out, size_in] averaging matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


@contextmanager
def adaptive_pool_symbolic(opset: int) -> Iterator[None]:
    """Scoped TorchScript symbolic: adaptive average pooling to a size that does not divide the input.

    timm's VGG head pools a feature map smaller than 7x7 (inputs below 224 px) *up* to 7x7, which the
    TorchScript exporter refuses. With static spatial sizes adaptive pooling is a linear map, exported here
    as ``P_h @ x @ P_w^T`` (exact bins of ``torch.nn.functional.adaptive_avg_pool2d``). Other cases go to
    the exporter's own symbolic. The registration is removed on exit.
    """
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic
    from torch.onnx._internal.torchscript_exporter import registration, symbolic_helper

    name = "aten::adaptive_avg_pool2d"
    group = registration.registry.get_function_group(name)
    default = group.get(opset) if group is not None else None

    def symbolic(g: Any, x: Any, output_size: Any) -> Any:
        sizes = symbolic_helper._get_tensor_sizes(x)
        try:
            out_hw = symbolic_helper._parse_arg(output_size, "is")
        except Exception:  # not a constant: leave it to the default (which reports it)
            out_hw = None
        if sizes is None or len(sizes) != 4 or out_hw is None or any(s is None for s in sizes[2:]):
            return default(g, x, output_size) if default is not None else None
        h, w = int(sizes[2]), int(sizes[3])
        oh, ow = int(out_hw[0]), int(out_hw[1])
        if (h % oh == 0 and w % ow == 0) or (oh, ow) == (1, 1):
            return default(g, x, output_size) if default is not None else None
        ph = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(h, oh)))
        pw = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(w, ow).T.copy()))
        return g.op("MatMul", g.op("MatMul", ph, x), pw)

    register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic(name, opset)


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] float32 averaging matrix with PyTorch's adaptive pooling bins."""
    mat = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat
