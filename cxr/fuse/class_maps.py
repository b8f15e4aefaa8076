"""Exact class activation maps inside one member's ONNX graph, found from the graph itself.

Takes: a member ``ModelProto`` (input ``input``, output ``logits``). Makes: a copy with output ``class_maps``
[N, K, h, w] whose spatial mean IS the logit (CAM): affine heads after global pooling commute with the mean;
a LayerNorm head (ConvNeXt) takes its statistics from the pooled vector. Or ``ClassMapExclusion``: why not
(e.g. a 1x1 last feature map, as VGG19's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASS_MAPS = "class_maps"
_POOLS = ("GlobalAveragePool", "ReduceMean")
_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Identity")
_TAG = "cam/"


@dataclass(frozen=True)
class ClassMapInfo:
    """A member's exact class map: where it reads, its spatial size and the head form it found."""

    feature: str  # the tensor scored (the input of the last global pooling)
    channels: int
    map_size: tuple[int, int]
    head: str  # "affine" or "layernorm+affine"


@dataclass(frozen=True)
class ClassMapExclusion:
    reason: str


def with_class_maps(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ClassMapInfo | ClassMapExclusion]:
    """``model`` plus the ``class_maps`` output, or ``model`` unchanged and why it has none."""
    graph = model.graph
    if len(graph.output) != 1:
        return model, ClassMapExclusion(f"the graph has {len(graph.output)} outputs, expected one (logits)")
    logits = graph.output[0].name
    inits = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pool = _last_spatial_pool(graph, inits)
    if pool is None:
        return model, ClassMapExclusion(
            "no global average pooling over the spatial axes before the classifier"
        )
    chain = _chain(pool.output[0], logits, consumers)
    if chain is None:
        return model, ClassMapExclusion("the global pooling does not lead to the logits through one path")
    head = _read_head(chain, inits)
    if isinstance(head, ClassMapExclusion):
        return model, head
    shape = _feature_shape(model, pool.input[0])
    if shape is None:
        return model, ClassMapExclusion(f"the shape of {pool.input[0]!r} cannot be inferred")
    c, h, w = shape
    if h * w == 1:
        return model, ClassMapExclusion(
            f"its last feature map is 1x1 ({c} channels): the head pools away no spatial map (VGG19's head is "
            "a dense 7x7 convolution over the whole feature map; other networks reach 1x1 when the input is "
            "too small for their stride), so no exact class map exists"
        )
    weight, bias, norm = head
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, new_inits = _cam_nodes(pool.input[0], weight, bias, norm, opset)
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(new_inits)
    k = weight.shape[0]
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    dims: list[int | str] = [batch.dim_param or batch.dim_value or "batch", k, h, w]
    out.graph.output.append(helper.make_tensor_value_info(CLASS_MAPS, TensorProto.FLOAT, dims))
    kind = "layernorm+affine" if norm is not None else "affine"
    return out, ClassMapInfo(pool.input[0], c, (h, w), kind)


def pooled_source(model: onnx.ModelProto) -> str | None:
    """The tensor the member's last global average pooling reads (its last feature map), or None."""
    pool = _last_spatial_pool(model.graph, _constants(model.graph))
    return None if pool is None else pool.input[0]


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Initializers and Constant-node values by name (unsimplified graphs keep some as Constant nodes)."""
    consts = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    return consts


def _last_spatial_pool(graph: onnx.GraphProto, consts: dict[str, TensorProto]) -> onnx.NodeProto | None:
    pools = [n for n in graph.node if n.op_type in _POOLS and _is_spatial_pool(n, consts)]
    return pools[-1] if pools else None


def _is_spatial_pool(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    axes = [a for a in node.attribute if a.name == "axes"]
    if axes:
        values = list(axes[0].ints)
    elif len(node.input) > 1 and node.input[1] in inits:
        values = numpy_helper.to_array(inits[node.input[1]]).tolist()
    else:
        return False
    return sorted(v % 4 for v in values) == [2, 3]


def _chain(start: str, end: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto] | None:
    """The single-consumer path of nodes from ``start`` to ``end`` (None: it branches or never arrives)."""
    chain: list[onnx.NodeProto] = []
    current = start
    while current != end:
        nxt = consumers.get(current, [])
        if len(nxt) != 1 or len(chain) > 12:
            return None
        chain.append(nxt[0])
        current = nxt[0].output[0]
    return chain


_Norm = tuple[np.ndarray, np.ndarray, float]  # gamma [C], beta [C], epsilon


def _read_head(
    chain: list[onnx.NodeProto], inits: dict[str, TensorProto]
) -> tuple[np.ndarray, np.ndarray, _Norm | None] | ClassMapExclusion:
    """(W [K, C], b [K], LayerNorm or None) of an affine head after pooling, else why not."""
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    norm: _Norm | None = None

    def const(n: onnx.NodeProto, i: int) -> np.ndarray | None:
        """Input ``i`` of ``n`` when a constant (None: absent or computed)."""
        name = n.input[i] if len(n.input) > i else ""
        return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None

    for n in chain:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in _RESHAPES or (n.op_type == "Transpose" and weight is None):
            continue
        if n.op_type == "LayerNormalization" and weight is None and norm is None:
            gamma, beta = const(n, 1), const(n, 2)
            if gamma is None or int(attrs.get("axis", -1)) != -1:
                return ClassMapExclusion("its head's LayerNormalization is not over the channel axis")
            norm = (
                gamma.ravel(),
                np.zeros_like(gamma.ravel()) if beta is None else beta.ravel(),
                float(attrs.get("epsilon", 1e-5)),
            )
        elif n.op_type == "Gemm" and weight is None:
            b_mat = const(n, 1)
            if b_mat is None or attrs.get("transA", 0):
                return ClassMapExclusion("its classifier (Gemm) weights are not constants")
            weight = float(attrs.get("alpha", 1.0)) * (b_mat if attrs.get("transB", 0) else b_mat.T)
            c_vec = const(n, 2)
            bias = (
                np.zeros(weight.shape[0]) if c_vec is None else float(attrs.get("beta", 1.0)) * c_vec.ravel()
            )
        elif n.op_type == "Conv" and weight is None:
            w4 = const(n, 1)
            if w4 is None or w4.shape[2:] != (1, 1) or int(attrs.get("group", 1)) != 1:
                return ClassMapExclusion("its classifier convolution is not a constant 1x1 convolution")
            weight = w4[:, :, 0, 0]
            b_vec = const(n, 2)
            bias = np.zeros(weight.shape[0]) if b_vec is None else b_vec.ravel()
        elif n.op_type == "MatMul" and weight is None:
            m = const(n, 1)
            if m is None or m.ndim != 2:
                return ClassMapExclusion("its classifier (MatMul) weights are not a constant matrix")
            weight, bias = m.T, np.zeros(m.shape[1])
        elif n.op_type in ("Mul", "Div") and weight is not None and bias is not None:
            factor = const(n, 1)
            if factor is None or factor.size != 1:
                return ClassMapExclusion(f"its logits are scaled by a {n.op_type} cxr cannot map exactly")
            scale = float(factor.ravel()[0]) if n.op_type == "Mul" else 1.0 / float(factor.ravel()[0])
            weight, bias = weight * scale, bias * scale
        elif n.op_type == "Add" and weight is not None and bias is not None and not bias.any():
            add = const(n, 1) if n.input[1] in inits else const(n, 0)
            if add is None:
                return ClassMapExclusion("its classifier bias is not a constant")
            bias = bias + add.ravel()
        else:
            return ClassMapExclusion(f"its head after pooling has a {n.op_type} node cxr cannot map exactly")
    if weight is None or bias is None:
        return ClassMapExclusion("no linear classifier after the global pooling")
    if norm is not None and norm[0].shape[0] != weight.shape[1]:
        return ClassMapExclusion("its head's LayerNormalization and classifier disagree on the channels")
    return weight, bias, norm


def _feature_shape(model: onnx.ModelProto, name: str) -> tuple[int, int, int] | None:
    """(C, h, w) of ``name`` by ONNX shape inference (the members' spatial input size is static)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == name:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            if len(dims) == 4 and all(d > 0 for d in dims[1:]):
                return dims[1], dims[2], dims[3]
    return None


def reduce_node(
    op: str, x: str, axes: list[int], out: str, opset: int, inits: list[TensorProto], keepdims: int = 1
) -> onnx.NodeProto:
    """``op`` (ReduceMean/Min/Max/Sum) over ``axes``: an input from opset 18 (ReduceSum from 13), appended to
    ``inits``; an attribute before."""
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        inits.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), f"{out}_axes"))
        return helper.make_node(op, [x, f"{out}_axes"], [out], keepdims=keepdims, name=out)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=keepdims, name=out)


def _cam_nodes(
    feature: str, weight: np.ndarray, bias: np.ndarray, norm: _Norm | None, opset: int
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes from the feature map [N, C, h, w] to ``class_maps`` [N, K, h, w]: ``W[c] . F(x, y) + b[c]``, with
    a LayerNorm head ``F`` normalised per pixel over C with the pooled vector's sigma (one per image)."""
    k, c = weight.shape
    inits = [
        numpy_helper.from_array(weight.reshape(k, c, 1, 1).astype(np.float32), f"{_TAG}weight"),
        numpy_helper.from_array(bias.astype(np.float32), f"{_TAG}bias"),
    ]
    nodes: list[onnx.NodeProto] = []
    src = feature
    if norm is not None:
        gamma, beta, eps = norm
        inits += [
            numpy_helper.from_array(gamma.reshape(1, c, 1, 1).astype(np.float32), f"{_TAG}gamma"),
            numpy_helper.from_array(beta.reshape(1, c, 1, 1).astype(np.float32), f"{_TAG}beta"),
            numpy_helper.from_array(np.array(eps, dtype=np.float32), f"{_TAG}eps"),
        ]
        nodes += [
            reduce_node("ReduceMean", feature, [2, 3], f"{_TAG}pooled", opset, inits),  # p [N, C, 1, 1]
            reduce_node("ReduceMean", f"{_TAG}pooled", [1], f"{_TAG}pooled_mean", opset, inits),
            reduce_node("ReduceMean", feature, [1], f"{_TAG}pixel_mean", opset, inits),  # over C per pixel
            helper.make_node("Sub", [f"{_TAG}pooled", f"{_TAG}pooled_mean"], [f"{_TAG}pooled_c"]),
            helper.make_node("Mul", [f"{_TAG}pooled_c", f"{_TAG}pooled_c"], [f"{_TAG}pooled_sq"]),
            reduce_node("ReduceMean", f"{_TAG}pooled_sq", [1], f"{_TAG}pooled_var", opset, inits),
            helper.make_node("Add", [f"{_TAG}pooled_var", f"{_TAG}eps"], [f"{_TAG}var_eps"]),
            helper.make_node("Sqrt", [f"{_TAG}var_eps"], [f"{_TAG}sigma"]),  # one scale per image
            helper.make_node("Sub", [feature, f"{_TAG}pixel_mean"], [f"{_TAG}centred"]),
            helper.make_node("Div", [f"{_TAG}centred", f"{_TAG}sigma"], [f"{_TAG}scaled"]),
            helper.make_node("Mul", [f"{_TAG}scaled", f"{_TAG}gamma"], [f"{_TAG}gained"]),
            helper.make_node("Add", [f"{_TAG}gained", f"{_TAG}beta"], [f"{_TAG}normed"]),
        ]
        src = f"{_TAG}normed"
    nodes.append(
        helper.make_node("Conv", [src, f"{_TAG}weight", f"{_TAG}bias"], [CLASS_MAPS], kernel_shape=[1, 1])
    )
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{_TAG}{n.op_type.lower()}_{i}"
    return nodes, inits
