"""The ensemble heatmap: the members' exact class maps combined by the meta-learner's own weights.

Takes: the checked members and the meta-learner. Makes: a ``HeatmapPlan`` (each member's map or why none,
the weights, the rule for the metadata) and the nodes giving ``class_heatmaps`` [N, K, H, W] and
``heatmap`` [N, H, W] (the predicted class's), in [0, 1]. The rule is ``RULE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.fuse.class_maps import CLASS_MAPS, ClassMapExclusion, ClassMapInfo, reduce_node, with_class_maps
from cxr.fuse.members import MemberModel, MetaModel
from cxr.spec import OUTPUT_CLASS_HEATMAPS, OUTPUT_HEATMAP, OUTPUT_PROBABILITIES

STEP = 0.1
RULE = (
    "per mapped member: exact class activation map (spatial mean = the member's logit), min-max scaled to "
    "[0, 1] per image and class, bilinear (half-pixel) resize to the input size; ensemble map of class c = "
    "sum over mapped members of w[m][c] * map; w[m][c] = the rise of the meta-learner's class-c logit "
    "(centred log-probability) "
    f"when member m moves {STEP} probability onto class c from the undecided point (every member 1/K), "
    "clipped at 0 and normalised over the mapped members (equal if all 0); 'heatmap' is the predicted class's map"
)


@dataclass(frozen=True)
class HeatmapPlan:
    models: dict[str, onnx.ModelProto]  # member name -> its graph with the class_maps output (mapped only)
    maps: dict[str, ClassMapInfo]
    excluded: dict[str, str]  # member name -> why it has no map
    weights: np.ndarray  # [M, K] over the member order; 0 for excluded members
    meta_sensitivity: np.ndarray  # [M, K] before clipping and normalising

    def to_card(self, member_order: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
        def per_member(a: np.ndarray) -> dict[str, dict[str, float]]:
            return {
                n: {c: round(float(a[i, j]), 6) for j, c in enumerate(classes)}
                for i, n in enumerate(member_order)
            }

        return {
            "outputs": {
                OUTPUT_HEATMAP: "[N, H, W] predicted class",
                OUTPUT_CLASS_HEATMAPS: "[N, K, H, W] every class",
            },
            "range": [0.0, 1.0],
            "rule": RULE,
            "members": {
                name: (
                    {"mapped": True, "map_size": list(self.maps[name].map_size), "head": self.maps[name].head}
                    if name in self.maps
                    else {"mapped": False, "reason": self.excluded[name]}
                )
                for name in member_order
            },
            "weights": per_member(self.weights),
            "meta_sensitivity": per_member(self.meta_sensitivity),
        }


def plan_heatmaps(members: Sequence[MemberModel], meta: MetaModel, threads: int | None = None) -> HeatmapPlan:
    """Each member's class map (or why none) and the combination weights (``RULE``)."""
    models: dict[str, onnx.ModelProto] = {}
    maps: dict[str, ClassMapInfo] = {}
    excluded: dict[str, str] = {}
    for m in members:
        model, info = with_class_maps(m.model)
        if isinstance(info, ClassMapExclusion):
            excluded[m.name] = info.reason
        else:
            models[m.name], maps[m.name] = model, info
    k = len(meta.info["classes"])
    sens = meta_sensitivity(meta, len(members), k, threads)
    mapped = np.array([m.name in maps for m in members])
    weights = np.where(mapped[:, None], np.clip(sens, 0.0, None), 0.0)
    total = weights.sum(axis=0)
    equal = (mapped / max(1, mapped.sum()))[:, None]  # a class no mapped member raises: equal weights
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), equal)
    return HeatmapPlan(models, maps, excluded, weights, sens)


def meta_sensitivity(meta: MetaModel, n_members: int, k: int, threads: int | None = None) -> np.ndarray:
    """[M, K]: d logit_ensemble[c] / d p_member[m, c] (the logit: the centred log-probability, which does
    not saturate) by a finite difference from the undecided point."""
    from cxr.session import cpu_session

    sess = cpu_session(meta.model.SerializeToString(), threads)
    feed = sess.get_inputs()[0]
    dtype = np.float64 if "double" in feed.type else np.float32
    base = np.full((1, n_members * k), 1.0 / k)
    rows = [base]
    for m in range(n_members):
        for c in range(k):
            x = base.copy()
            x[0, m * k : (m + 1) * k] -= STEP / (k - 1)
            x[0, m * k + c] += STEP + STEP / (k - 1)
            rows.append(x)
    feats = np.concatenate(rows).astype(dtype)
    p = np.asarray(sess.run([OUTPUT_PROBABILITIES], {feed.name: feats})[0], np.float64)
    logp = np.log(np.clip(p, 1e-300, None))
    logits = logp - logp.mean(axis=1, keepdims=True)  # centred log-probabilities: the meta-learner's logits
    rise = (logits[1:] - logits[0]).reshape(n_members, k, k)  # [member, moved class, output class]
    return np.stack([np.diagonal(rise[m]) for m in range(n_members)]) / STEP


def heatmap_nodes(
    plan: HeatmapPlan, member_order: Sequence[str], size: tuple[int, int], k: int, label: str, opset: int
) -> tuple[list[onnx.NodeProto], list[TensorProto], list[onnx.ValueInfoProto]]:
    """Nodes from every mapped member's ``<name>/class_maps`` to the two heatmap outputs."""
    h, w = size
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(np.array([h, w], dtype=np.int64), "heat/size_hw"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "heat/eps"),
    ]
    weighted: list[str] = []
    for i, name in enumerate(member_order):
        if name not in plan.maps:
            continue
        t = f"heat/{name}/"
        src = f"{name}/{CLASS_MAPS}"
        inits.append(
            numpy_helper.from_array(plan.weights[i].reshape(1, k, 1, 1).astype(np.float32), f"{t}weight")
        )
        nodes += [
            reduce_node("ReduceMin", src, [2, 3], f"{t}min", opset, inits),
            reduce_node("ReduceMax", src, [2, 3], f"{t}max", opset, inits),
            helper.make_node("Sub", [src, f"{t}min"], [f"{t}shifted"], name=f"{t}shift"),
            helper.make_node("Sub", [f"{t}max", f"{t}min"], [f"{t}range"], name=f"{t}range"),
            helper.make_node("Add", [f"{t}range", "heat/eps"], [f"{t}range_eps"], name=f"{t}range_eps"),
            helper.make_node("Div", [f"{t}shifted", f"{t}range_eps"], [f"{t}unit"], name=f"{t}unit"),
            helper.make_node("Shape", [f"{t}unit"], [f"{t}shape"], end=2, name=f"{t}shape"),
            helper.make_node(
                "Concat", [f"{t}shape", "heat/size_hw"], [f"{t}sizes"], axis=0, name=f"{t}sizes"
            ),
            helper.make_node(
                "Resize",
                [f"{t}unit", "", "", f"{t}sizes"],
                [f"{t}up"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
                name=f"{t}resize",
            ),
            helper.make_node("Mul", [f"{t}up", f"{t}weight"], [f"{t}weighted"], name=f"{t}weigh"),
        ]
        weighted.append(f"{t}weighted")
    nodes.append(helper.make_node("Sum", weighted, [OUTPUT_CLASS_HEATMAPS], name="heat/sum"))
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "heat/axis1"))
    nodes += [
        helper.make_node("Unsqueeze", [label, "heat/axis1"], ["heat/label_col"], name="heat/label_col"),
        helper.make_node(
            "GatherND",
            [OUTPUT_CLASS_HEATMAPS, "heat/label_col"],
            [OUTPUT_HEATMAP],
            batch_dims=1,
            name="heat/predicted",
        ),
    ]
    outputs = [
        helper.make_tensor_value_info(OUTPUT_CLASS_HEATMAPS, TensorProto.FLOAT, ["batch", k, h, w]),
        helper.make_tensor_value_info(OUTPUT_HEATMAP, TensorProto.FLOAT, ["batch", h, w]),
    ]
    return nodes, inits, outputs
