"""FLOPs per image of an ONNX graph: takes a ``ModelProto`` or path, makes ``FlopsResult`` (per op type too).

One multiply-add is 2 FLOPs; Conv, ConvTranspose, Gemm and MatMul are counted (other op types are listed
in ``uncounted``, bias additions are not counted). Shapes come from shape inference at batch 1 on a
weight-free copy, so models over protobuf's 2 GB are cheap to analyse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, shape_inference

from cxr.errors import ModelError
from cxr.export.onnx_files import tensor_bytes

COUNTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SMALL_TENSOR_BYTES = 4096  # initializers up to this size keep their values (shape tensors, axes...)


@dataclass(frozen=True)
class FlopsResult:
    flops_per_image: int
    by_op: Mapping[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()  # op types present in the graph that are not counted
    unknown_shapes: tuple[str, ...] = ()  # counted nodes whose shapes shape inference could not resolve


def count_flops(model: ModelProto | Path | str) -> FlopsResult:
    """FLOPs per image (batch 1) of ``model``."""
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path | str) else model
    light = _weight_free_copy(proto)
    _set_batch(light, 1)
    try:
        inferred = shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and plain RuntimeErrors
        raise ModelError(f"ONNX shape inference failed, so FLOPs cannot be counted: {e}") from e
    shapes = _shape_table(inferred)
    by_op: dict[str, int] = {}
    unknown: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            unknown.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
    uncounted = sorted({n.op_type for n in inferred.graph.node} - set(COUNTED_OPS))
    return FlopsResult(sum(by_op.values()), by_op, tuple(uncounted), tuple(unknown))


def _weight_free_copy(proto: ModelProto) -> ModelProto:
    """The graph with large initializers replaced by data-less tensors of the same name, type and dims."""
    graph = helper.make_graph(
        nodes=list(proto.graph.node),
        name=proto.graph.name,
        inputs=list(proto.graph.input),
        outputs=list(proto.graph.output),
        initializer=[_strip(t) for t in proto.graph.initializer],
    )
    light = helper.make_model(graph, opset_imports=list(proto.opset_import))
    light.ir_version = proto.ir_version
    return light


def _strip(t: TensorProto) -> TensorProto:
    if t.data_location == TensorProto.EXTERNAL or tensor_bytes(t) > SMALL_TENSOR_BYTES:
        out = TensorProto(name=t.name, data_type=t.data_type)
        out.dims.extend(t.dims)
        return out
    return t


def _set_batch(proto: ModelProto, batch: int) -> None:
    init_names = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in init_names:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0 and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    for value in proto.graph.output:  # symbolic output dims would otherwise clash with the fixed batch
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0 and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")


def _shape_table(proto: ModelProto) -> dict[str, tuple[int, ...]]:
    """The fully known shapes of the graph's values (a value with an unknown dimension is left out)."""
    table: dict[str, tuple[int, ...]] = {}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            table[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in proto.graph.initializer:
        table[t.name] = tuple(int(d) for d in t.dims)
    return table


def _node_flops(node: NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    ins = [shapes.get(n) for n in node.input[:2]]
    out = shapes.get(node.output[0])
    if len(ins) < 2 or ins[0] is None or ins[1] is None or out is None:
        return None
    a, b = ins[0], ins[1]
    if node.op_type == "Conv":
        # weight [Cout, Cin/group, k...]: each output element costs Cin/group * prod(k) multiply-adds
        return 2 * int(np.prod(out)) * int(np.prod(b[1:]))
    if node.op_type == "ConvTranspose":
        # each input element is scattered through Cout/group * prod(k) multiply-adds
        # weight [Cin, Cout/group, k...]
        return 2 * int(np.prod(a)) * int(np.prod(b[1:]))
    if node.op_type == "Gemm":
        trans_a = any(at.name == "transA" and helper.get_attribute_value(at) for at in node.attribute)
        k = a[0] if trans_a else a[-1]
        return 2 * int(np.prod(out)) * int(k)
    if node.op_type == "MatMul":
        k = a[-1] if len(a) >= 1 else 1
        return 2 * int(np.prod(out)) * int(k)
    return None
