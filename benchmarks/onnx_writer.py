"""Takes a GEMM's shapes and a constant right-hand matrix; makes the bytes of a one-node ONNX model.

cxr-bench measures this host's GEMM peak with onnxruntime, which runs ONNX graphs but cannot build
them, and cxr-bench may not import the ``onnx`` package (the runtime side is torch- and onnx-free). So
this module writes the few protobuf messages a one-node graph needs by hand: ``ModelProto`` (IR 8, one
opset import), ``GraphProto`` (one ``NodeProto``, one initializer, inputs, one output) with the field
numbers of onnx.proto. Only non-negative varints and length-delimited fields are used; ``onnx.checker``
accepts the result (tests/test_bench_peak.py checks it). Nothing else in cxr writes ONNX this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

Port = tuple[str, DTypeLike, Sequence[int]]  # a graph input or output: name, element type, shape

IR_VERSION = 8
OPSET = 13
# TensorProto.DataType
ONNX_TYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6}


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"only non-negative varints are written, got {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dtype: np.dtype[Any], shape: Sequence[int]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)  # TensorShapeProto.dim{dim_value}
    tensor_type = _int(1, ONNX_TYPES[dtype]) + _bytes(2, dims)  # TypeProto.Tensor{elem_type, shape}
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))  # ValueInfoProto{name, type{tensor_type}}


def _tensor(name: str, array: np.ndarray) -> bytes:
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return dims + _int(2, ONNX_TYPES[array.dtype]) + _bytes(8, name) + _bytes(9, raw)


def gemm_model(op: str, a: Port, b: np.ndarray, out: Port) -> bytes:
    """``out = op(a, B)`` with ``a`` a graph input and ``B`` a constant (``MatMul``, ``MatMulInteger``)."""
    node = _bytes(1, a[0]) + _bytes(1, "B") + _bytes(2, out[0]) + _bytes(3, op.lower()) + _bytes(4, op)
    graph = (
        _bytes(1, node)
        + _bytes(2, f"cxr_peak_{op.lower()}")
        + _bytes(5, _tensor("B", b))
        + _bytes(11, _value_info(a[0], np.dtype(a[1]), a[2]))
        + _bytes(12, _value_info(out[0], np.dtype(out[1]), out[2]))
    )
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(2, "cxr-bench") + _bytes(7, graph) + _bytes(8, opset)
