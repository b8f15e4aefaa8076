"""Wire the members and the meta-learner into one ONNX graph, by hand (``compose.merge_models`` only chains).

Takes: checked members, the meta-learner and the fused input size. Makes: input ``image`` uint8 [N, 1, H, W]
-> shared preprocessing per distinct (size, mean, std) -> each ``<name>/``-prefixed member -> softmax ->
concat (member-major) -> ``meta/`` -> ``probabilities``, ``label``, ``member_probabilities``; optionally
``ood_score`` and the heatmap outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from cxr.errors import ModelError
from cxr.fuse.heatmaps import HeatmapPlan, heatmap_nodes
from cxr.fuse.members import MemberModel, MetaModel, opsets_of
from cxr.fuse.ood import OodModel, located, ood_nodes
from cxr.fuse.resize import probe_order, resize_nodes
from cxr.spec import INPUT_IMAGE, OUTPUT_LABEL, OUTPUT_MEMBER_PROBABILITIES, OUTPUT_PROBABILITIES

BATCH = "batch"
RESERVED = ("pre", "meta", "ensemble", "out")


@dataclass(frozen=True)
class ResizeStep:
    member: str
    from_size: tuple[int, int]
    to_size: tuple[int, int]
    order: str  # "hv" or "vh": which pass Pillow runs first for these sizes
    probe_mismatches: int  # pixels of the probe images the graph's resize still gets wrong (0 expected)


@dataclass(frozen=True)
class FusedGraph:
    model: onnx.ModelProto
    input_size: tuple[int, int]
    resizes: tuple[ResizeStep, ...]
    ir_version: int
    opsets: dict[str, int]
    ood: OodModel | None = None  # the out-of-distribution score placed in the graph (output ood_score)


def fused_input_size(members: Sequence[MemberModel], input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The fused graph's input size: the one asked for, else the largest member input."""
    return input_size or max((m.input_size for m in members), key=lambda s: (s[0] * s[1], s))


def _meta_at_opset(meta: MetaModel, opset: int) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(meta.model)
    current = opsets_of(model).get("", opset)
    if current != opset:
        try:
            model = onnx.version_converter.convert_version(model, opset)
        except Exception as e:  # the converter raises plain RuntimeErrors
            raise ModelError(
                f"the meta-learner {meta.path} uses opset {current} and cannot be converted to the members' "
                f"opset {opset}: {e}",
                hint=f"re-run `cxr stack` with --opset {opset}",
                path=meta.path,
            ) from e
    return model


def _preprocess_chain(
    size: tuple[int, int],
    fused: tuple[int, int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    tag: str,
    order: str,
) -> tuple[str, list[onnx.NodeProto], list[TensorProto]]:
    """Nodes from the shared float gray image to the normalised [N, C, h, w] input at ``size``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    gray = "pre/gray_f32"
    if size != fused:
        nodes_r, inits_r = resize_nodes(gray, f"{tag}gray", fused, size, f"{tag}resize_", order)
        nodes += nodes_r
        inits += inits_r
        gray = f"{tag}gray"
    inits += [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), f"{tag}c255"),
        numpy_helper.from_array(np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1), f"{tag}mean"),
        numpy_helper.from_array(np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1), f"{tag}std"),
    ]
    nodes.append(helper.make_node("Div", [gray, f"{tag}c255"], [f"{tag}unit"], name=f"{tag}scale"))
    src = f"{tag}unit"
    if channels > 1:
        nodes.append(
            helper.make_node("Concat", [src] * channels, [f"{tag}rgb"], axis=1, name=f"{tag}replicate")
        )
        src = f"{tag}rgb"
    nodes.append(helper.make_node("Sub", [src, f"{tag}mean"], [f"{tag}centred"], name=f"{tag}sub_mean"))
    nodes.append(
        helper.make_node("Div", [f"{tag}centred", f"{tag}std"], [f"{tag}input"], name=f"{tag}div_std")
    )
    return f"{tag}input", nodes, inits


def topological_order(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes, stably reordered so every input is made before it is used (``onnx.checker`` requires it;
    FP16 conversion appends its input casts after their readers); an input nobody makes is an error."""
    made = set(available) | {""}  # "" marks an omitted optional input
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting: list[onnx.NodeProto] = []
        for n in pending:  # one pass emits every node whose inputs exist by then (a sorted graph: all)
            if all(i in made for i in n.input):
                ordered.append(n)
                made.update(n.output)
            else:
                waiting.append(n)
        if len(waiting) == len(pending):
            missing = sorted({i for n in waiting for i in n.input if i not in made})
            raise ModelError(
                f"the fused graph reads tensors that no node makes: {', '.join(missing[:5])}",
                hint="report this as a cxr bug with the member files",
            )
        pending = waiting
    return ordered


@dataclass
class _Parts:
    """What the fused graph is assembled from, in order: nodes, initializers, value infos, functions."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[TensorProto] = field(default_factory=list)
    value_info: list[onnx.ValueInfoProto] = field(default_factory=list)
    functions: list[onnx.FunctionProto] = field(default_factory=list)

    def add_graph(self, prefixed: onnx.ModelProto) -> None:
        """Append a name-prefixed part's nodes, weights, value infos and functions."""
        g = prefixed.graph
        self.nodes.extend(g.node)
        self.inits.extend(g.initializer)
        self.value_info.extend(g.value_info)
        self.functions.extend(prefixed.functions)


@dataclass
class _Chains:
    """One preprocessing chain per distinct (size, channels, mean, std), and the resizes they contain."""

    fused: tuple[int, int]
    outputs: dict[tuple[Any, ...], str] = field(default_factory=dict)
    tags: dict[tuple[int, int], int] = field(default_factory=dict)
    resizes: list[ResizeStep] = field(default_factory=list)


def build_fused(
    members: Sequence[MemberModel],
    meta: MetaModel,
    input_size: tuple[int, int] | None = None,
    heatmaps: HeatmapPlan | None = None,
    ood: OodModel | None = None,
) -> FusedGraph:
    """The fused graph without metadata; with ``heatmaps`` the heatmap outputs, with ``ood`` ``ood_score``
    (unless a member of these precisions has no pooling to read)."""
    k = len(meta.info["classes"])
    _check_member_names(members)
    fused = fused_input_size(members, input_size)
    opset = members[0].opsets.get("", 17)
    meta_model = _meta_at_opset(meta, opset)
    ir_version = max([int(m.model.ir_version) for m in members] + [int(meta_model.ir_version)])
    opsets = _merged_opsets([*(m.model for m in members), meta_model], opset)

    parts = _Parts(
        nodes=[
            helper.make_node("Cast", [INPUT_IMAGE], ["pre/gray_f32"], to=TensorProto.FLOAT, name="pre/cast")
        ]
    )
    chains = _Chains(fused)
    prob_names = [
        _add_member(parts, _with_maps(m, heatmaps), _add_preprocess(parts, chains, m)) for m in members
    ]
    _add_meta(parts, meta, meta_model, prob_names, k)
    extra_outputs: list[onnx.ValueInfoProto] = []
    if heatmaps is not None:
        heat_nodes, heat_inits, extra_outputs = heatmap_nodes(
            heatmaps, [m.name for m in members], fused, k, OUTPUT_LABEL, opset
        )
        parts.nodes += heat_nodes
        parts.inits += heat_inits
    placed = None if ood is None else located(ood, {m.name: m.model for m in members})
    if placed is not None:
        ood_n, ood_i, ood_out = ood_nodes(placed, opset)
        parts.nodes += ood_n
        parts.inits += ood_i
        extra_outputs.append(ood_out)

    h, w = fused
    graph = helper.make_graph(
        topological_order(parts.nodes, {INPUT_IMAGE, *(t.name for t in parts.inits)}),
        "cxr_ensemble",
        [helper.make_tensor_value_info(INPUT_IMAGE, TensorProto.UINT8, [BATCH, 1, h, w])],
        [
            helper.make_tensor_value_info(OUTPUT_PROBABILITIES, TensorProto.FLOAT, [BATCH, k]),
            helper.make_tensor_value_info(OUTPUT_LABEL, TensorProto.INT64, [BATCH]),
            helper.make_tensor_value_info(
                OUTPUT_MEMBER_PROBABILITIES, TensorProto.FLOAT, [BATCH, len(members), k]
            ),
            *extra_outputs,
        ],
        initializer=parts.inits,
        value_info=parts.value_info,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="cxr",
        ir_version=ir_version,
        functions=parts.functions,
    )
    return FusedGraph(model, (int(h), int(w)), tuple(chains.resizes), ir_version, opsets, placed)


def _with_maps(m: MemberModel, heatmaps: HeatmapPlan | None) -> MemberModel:
    """``m`` with its class-map graph when the heatmap plan maps it."""
    if heatmaps is None or m.name not in heatmaps.models:
        return m
    return replace(m, model=heatmaps.models[m.name])


def _check_member_names(members: Sequence[MemberModel]) -> None:
    for m in members:
        if m.name in RESERVED or m.name.startswith("pre_") or "/" in m.name:
            raise ModelError(
                f"member name '{m.name}' clashes with the fused graph's own names ({', '.join(RESERVED)}, pre_*)",
                hint="rename the member (its folder under RUN_DIR/members and its export)",
                path=m.path,
            )


def _merged_opsets(parts: Sequence[onnx.ModelProto], opset: int) -> dict[str, int]:
    """The highest version of each domain across the parts; the default domain pinned to ``opset``."""
    opsets: dict[str, int] = {}
    for part in parts:
        for domain, version in opsets_of(part).items():
            opsets[domain] = max(opsets.get(domain, 0), version)
    opsets[""] = opset
    return opsets


def _add_preprocess(parts: _Parts, chains: _Chains, m: MemberModel) -> str:
    """The name of ``m``'s normalised input, adding its preprocessing chain unless an equal one exists."""
    size, fused = m.input_size, chains.fused
    spec = m.meta.preprocess
    key = (size, spec.channels, tuple(spec.mean), tuple(spec.std))
    if key not in chains.outputs:
        order, misses = ("hv", 0) if size == fused else probe_order(fused, size)
        tag = f"pre_{size[0]}x{size[1]}" + (f"_{chains.tags[size]}" if size in chains.tags else "") + "/"
        chains.tags[size] = chains.tags.get(size, 0) + 1
        out, n, i = _preprocess_chain(size, fused, spec.channels, spec.mean, spec.std, tag, order)
        chains.outputs[key] = out
        parts.nodes += n
        parts.inits += i
        if size != fused:
            chains.resizes.append(ResizeStep(m.name, fused, size, order, misses))
    elif size != fused:
        first = next(r for r in chains.resizes if r.to_size == size)
        chains.resizes.append(ResizeStep(m.name, fused, size, first.order, first.probe_mismatches))
    return chains.outputs[key]


def _add_member(parts: _Parts, m: MemberModel, chain_out: str) -> str:
    """Wire ``m`` (prefixed ``<name>/``) from ``chain_out`` to its softmax; the probabilities' name."""
    prefix = f"{m.name}/"
    prefixed = compose.add_prefix(m.model, prefix)
    member_in = prefix + m.input_name
    member_out = prefix + m.output_name
    if m.input_type == TensorProto.FLOAT16:
        parts.nodes.append(
            helper.make_node(
                "Cast", [chain_out], [member_in], to=TensorProto.FLOAT16, name=f"{prefix}in_cast"
            )
        )
    elif m.input_type == TensorProto.FLOAT:
        parts.nodes.append(helper.make_node("Identity", [chain_out], [member_in], name=f"{prefix}in"))
    else:
        raise ModelError(
            f"member '{m.name}' takes input type {TensorProto.DataType.Name(m.input_type)}; cxr fuses float32 "
            "or float16 members",
            hint="re-export the member with `cxr export`",
            path=m.path,
        )
    parts.add_graph(prefixed)
    logits = member_out
    if m.output_type != TensorProto.FLOAT:
        logits = f"{prefix}logits_f32"
        parts.nodes.append(
            helper.make_node("Cast", [member_out], [logits], to=TensorProto.FLOAT, name=f"{prefix}out_cast")
        )
    probs = f"{prefix}probabilities"
    parts.nodes.append(helper.make_node("Softmax", [logits], [probs], axis=1, name=f"{prefix}softmax"))
    return probs


def _add_meta(
    parts: _Parts, meta: MetaModel, meta_model: onnx.ModelProto, prob_names: Sequence[str], k: int
) -> None:
    """Concatenate the members' probabilities (member-major), reshape them, feed the prefixed meta-learner."""
    parts.nodes.append(
        helper.make_node("Concat", list(prob_names), ["ensemble/features"], axis=1, name="ensemble/concat")
    )
    parts.inits.append(
        numpy_helper.from_array(np.array([-1, len(prob_names), k], dtype=np.int64), "ensemble/member_shape")
    )
    parts.nodes.append(
        helper.make_node(
            "Reshape",
            ["ensemble/features", "ensemble/member_shape"],
            [OUTPUT_MEMBER_PROBABILITIES],
            name="ensemble/reshape",
        )
    )
    pmeta = compose.add_prefix(meta_model, "meta/")
    mg = pmeta.graph
    inits_meta = {t.name for t in mg.initializer}
    meta_in = [i for i in mg.input if i.name not in inits_meta]
    if len(meta_in) != 1:
        raise ModelError(
            f"the meta-learner {meta.path} has {len(meta_in)} inputs, expected 1", path=meta.path
        )
    to_double = meta_in[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    parts.nodes.append(
        _cast_or_identity(
            "ensemble/features", meta_in[0].name, TensorProto.DOUBLE if to_double else None, "meta/in"
        )
    )
    parts.add_graph(pmeta)
    meta_out = {o.name: o.type.tensor_type.elem_type for o in mg.output}
    keep_float = meta_out.get("meta/probabilities") == TensorProto.FLOAT
    parts.nodes.append(
        _cast_or_identity(
            "meta/probabilities",
            OUTPUT_PROBABILITIES,
            None if keep_float else TensorProto.FLOAT,
            "out/probabilities",
        )
    )
    parts.nodes.append(helper.make_node("Identity", ["meta/label"], [OUTPUT_LABEL], name="out/label"))


def _cast_or_identity(src: str, dst: str, to: int | None, name: str) -> onnx.NodeProto:
    """``Cast`` to ``to``, or ``Identity`` when ``to`` is None."""
    if to is None:
        return helper.make_node("Identity", [src], [dst], name=name)
    return helper.make_node("Cast", [src], [dst], to=to, name=name)
