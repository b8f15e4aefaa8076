"""The out-of-distribution score inside the fused graph: ``ood_score`` float32 [N] from the members' features.

Takes: an ``OodModel`` (``cxr.fuse.ood``), fitted at fuse time, and the opset. Makes: the nodes that read each
member's last feature map (``<name>/<feature>``, name-prefixed as in the fused graph), pool it, and compute
the score of ``cxr.fuse.ood`` (``OodModel.score`` is the numpy reference it is verified against), and the
output's value info. Constants are float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.fuse.class_maps import reduce_node
from cxr.fuse.ood import OodModel, pooled_nodes
from cxr.spec import OUTPUT_OOD_SCORE


def _reduce(op: str, x: str, axis: int, out: str, opset: int, inits: list[TensorProto]) -> onnx.NodeProto:
    """``op`` over one axis without keeping it (``cxr.fuse.class_maps.reduce_node``)."""
    node, axes = reduce_node(op, x, [axis], out, opset, keepdims=0)
    inits += axes
    return node


def ood_nodes(
    ood: OodModel, opset: int
) -> tuple[list[onnx.NodeProto], list[TensorProto], onnx.ValueInfoProto]:
    """Nodes from the members' feature maps to ``ood_score`` (see the module docstring)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    scores: list[str] = []
    for m in ood.members:
        t = f"ood/{m.name}/"

        def const(name: str, value: np.ndarray, t: str = t) -> str:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"{t}{name}"))
            return f"{t}{name}"

        nodes += pooled_nodes(f"{m.name}/{m.feature}", f"{t}pooled", t)
        axis1 = f"{t}axis1"
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axis1))
        mk = helper.make_node
        nodes += [
            mk("Sub", [f"{t}pooled", const("mean", m.mean)], [f"{t}xc"], name=f"{t}centre"),
            mk("MatMul", [f"{t}xc", const("components", m.components)], [f"{t}z"], name=f"{t}project"),
            mk("MatMul", [f"{t}z", const("whiten", m.whiten)], [f"{t}u"], name=f"{t}whiten"),
            mk("Unsqueeze", [f"{t}u", axis1], [f"{t}u3"], name=f"{t}u3"),
            mk("Sub", [f"{t}u3", const("centres", m.centres @ m.whiten)], [f"{t}diff"], name=f"{t}diff"),
            mk("Mul", [f"{t}diff", f"{t}diff"], [f"{t}diff2"], name=f"{t}diff2"),
        ]
        nodes.append(_reduce("ReduceSum", f"{t}diff2", 2, f"{t}d2_classes", opset, inits))
        nodes.append(_reduce("ReduceMin", f"{t}d2_classes", 1, f"{t}d2", opset, inits))
        nodes += [
            mk("MatMul", [f"{t}z", const("components_t", m.components.T)], [f"{t}back"], name=f"{t}back"),
            mk("Sub", [f"{t}xc", f"{t}back"], [f"{t}resid"], name=f"{t}resid"),
            mk("Mul", [f"{t}resid", f"{t}resid"], [f"{t}resid2"], name=f"{t}resid2"),
        ]
        nodes.append(_reduce("ReduceSum", f"{t}resid2", 1, f"{t}r2_raw", opset, inits))
        nodes += [
            mk(
                "Div",
                [f"{t}r2_raw", const("off_scale", np.array(m.residual_scale * m.scale_off))],
                [f"{t}off"],
                name=f"{t}off",
            ),  # fmt: skip
            mk("Div", [f"{t}d2", const("in_scale", np.array(m.k * m.scale_in))], [f"{t}in"], name=f"{t}in"),
            mk("Max", [f"{t}in", f"{t}off"], [f"{t}score"], name=f"{t}score"),
        ]
        scores.append(f"{t}score")
    nodes.append(helper.make_node("Mean", scores, [OUTPUT_OOD_SCORE], name="ood/mean"))
    return nodes, inits, helper.make_tensor_value_info(OUTPUT_OOD_SCORE, TensorProto.FLOAT, ["batch"])


def located(ood: OodModel, models: dict[str, onnx.ModelProto]) -> OodModel | None:
    """``ood`` with each member's feature tensor as named in ``models`` (a variant may rename it); None:
    a member of ``ood`` is missing or has no pooling there."""
    from dataclasses import replace

    from cxr.fuse.class_maps import pooled_source

    members = []
    for m in ood.members:
        feature = pooled_source(models[m.name]) if m.name in models else None
        if feature is None:
            return None
        members.append(replace(m, feature=feature))
    return replace(ood, members=tuple(members))
