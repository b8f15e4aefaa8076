"""The fused ensemble's cxr metadata: written once for the whole graph, none of the members' own.

Takes: the checked members, the meta-learner, the ``FusedGraph`` and the file's precision. Makes: a
``ModelMetadata`` with ``input_format="uint8_gray"``, the fused input size, and a card naming every member
(hashes, metrics, preprocessing), the meta-learner, the preprocessing split between runtime
(``RUNTIME_STEPS``) and graph (``GRAPH_STEPS``), the in-graph resizes, FLOPs and the notice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from cxr import __version__
from cxr.fuse.graph import FusedGraph
from cxr.fuse.members import MemberModel, MetaModel
from cxr.labels import NOTICE
from cxr.spec import ModelMetadata, PreprocessSpec

RUNTIME_STEPS = (
    "decode the file (PNG, JPEG, DICOM...) with cxr.imaging.decode.decode_gray",
    "convert to 8-bit grayscale",
    "resize to the metadata's input_size with Pillow's antialiased bilinear filter",
    "stack as uint8 [N, 1, H, W] and feed as 'image'",
)
GRAPH_STEPS = (
    "cast to float32",
    "per member of another input size: Pillow-exact bilinear resize (two fixed-point matrix products)",
    "scale by 1/255",
    "replicate the gray channel to 3 channels",
    "each member's own normalisation (x - mean) / std (one chain per distinct size and mean/std)",
    "the members (name-prefixed) -> softmax -> concat (member-major)",
    "meta-learner",
)


def ensemble_metadata(
    members: Sequence[MemberModel],
    meta: MetaModel,
    fused: FusedGraph,
    precision: str,
    simplified: bool,
    fp32_sha256: str | None = None,
) -> ModelMetadata:
    """The metadata of one fused file; a variant also names the FP32 ensemble it was built beside."""
    info = meta.info
    card: dict[str, Any] = {
        "kind": "ensemble",
        "name": "cxr-ensemble",
        "members": [_member_entry(m, precision) for m in members],
        "member_order": [m.name for m in members],
        "dataset": members[0].card.get("dataset"),
        "test_metrics": info.get("test_metrics"),
        "meta": _meta_entry(meta),
        "calibration": info.get("calibration"),  # the temperature is inside the graph; this records it
        "operating_points": info.get("operating_points"),  # read by the runtime (cxr.runtime.operating)
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "flops_per_image": _flops_per_image(members, len(info["classes"])),
        "precision": precision,
        "runtime_preprocess": list(RUNTIME_STEPS),
        "graph_preprocess": list(GRAPH_STEPS),
        "resize_in_graph": [
            {"member": r.member, "from": list(r.from_size), "to": list(r.to_size), "pass_order": r.order}
            for r in fused.resizes
        ],
        "simplified": simplified,
        "ood": None if fused.ood is None else fused.ood.to_card(),  # read by cxr.runtime.assess
        "notice": NOTICE,
    }
    if fp32_sha256 is not None:  # a variant names the FP32 ensemble it was built beside
        card["fp32_sha256"] = fp32_sha256
    spec = members[0].meta.preprocess
    pre = PreprocessSpec(input_size=fused.input_size, channels=spec.channels, mean=spec.mean, std=spec.std)
    return ModelMetadata(classes=tuple(info["classes"]), preprocess=pre, input_format="uint8_gray", card=card)


def _member_entry(m: MemberModel, precision: str) -> dict[str, Any]:
    return {
        "name": m.name,
        "timm_name": m.card.get("timm_name"),
        "checkpoint_sha256": m.card.get("checkpoint_sha256"),
        "onnx_sha256": m.sha256,
        "metrics": m.metrics,
        "input_size": list(m.input_size),
        "mean": list(m.meta.preprocess.mean),
        "std": list(m.meta.preprocess.std),
        "pretrained": m.card.get("pretrained"),
        "precision": m.card.get("precision", precision),
        "flops_per_image": m.card.get("flops_per_image"),
    }


def _meta_entry(meta: MetaModel) -> dict[str, Any]:
    info = meta.info
    return {
        "type": info.get("type"),
        "class_name": info.get("class_name"),
        "params": info.get("params"),
        "cv_score": info.get("cv_score"),
        "cv_metric": info.get("cv_metric"),
        "val_metrics": info.get("val_metrics"),
        "test_metrics": info.get("test_metrics"),
        "source": info.get("source"),
        "classes_seen": info.get("classes_seen"),
        "onnx_sha256": meta.sha256,
    }


def _flops_per_image(members: Sequence[MemberModel], k: int) -> float | None:
    """The members' FLOPs plus the meta-learner's (a linear map of M*K features); None if one is unknown."""
    flops = [m.card.get("flops_per_image") for m in members]
    known_flops = [float(f) for f in flops if f is not None]
    meta_flops = 2 * len(members) * k * k + 6 * len(members) * k
    return sum(known_flops) + meta_flops if len(known_flops) == len(flops) else None
