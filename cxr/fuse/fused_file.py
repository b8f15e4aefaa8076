"""One fused file of one precision: wire, simplify (FP32), add the ensemble's metadata, save, check, verify.

Takes: checked members (FP32, or one variant of each; an INT8 file may keep some members FP32), the
meta-learner, the output path, the precision and the ``FuseConfig``. Makes: the file (external data near the
2 GB protobuf limit) with one cxr metadata card for the whole ensemble, checked by ``onnx.checker`` and equal
to the separate members + meta-learner within ``tolerance`` -> ``FusedFile``; ``drift_vs_fp32`` compares a
variant ensemble with the FP32 one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cxr import __version__
from cxr.export.onnx_files import model_nbytes, onnx_size_bytes, save_onnx
from cxr.fuse.graph import FusedGraph, build_fused
from cxr.fuse.members import MemberModel, MetaModel, graph_spec
from cxr.fuse.ood import OodModel, check_ood
from cxr.fuse.types import FuseConfig, FusedFile
from cxr.fuse.verify import SeparatePipeline, check_separate, session
from cxr.labels import NOTICE
from cxr.session import file_sha256
from cxr.spec import CARD_INT8_FLOAT_MEMBERS, INPUT_IMAGE, OUTPUT_PROBABILITIES, ModelMetadata

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
    float_members: Mapping[str, str] | None = None,
) -> ModelMetadata:
    """The metadata of one fused file; a variant also names the FP32 ensemble it was built beside, and an INT8
    one the members it runs in FP32 and why (``CARD_INT8_FLOAT_MEMBERS``)."""
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
    if float_members is not None:
        card[CARD_INT8_FLOAT_MEMBERS] = dict(float_members)
    pre = graph_spec(members, fused.input_size)
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
    keys = "type class_name params cv_score cv_metric val_metrics test_metrics source classes_seen".split()
    return {k: meta.info.get(k) for k in keys} | {"onnx_sha256": meta.sha256}


def _flops_per_image(members: Sequence[MemberModel], k: int) -> float | None:
    """The members' FLOPs plus the meta-learner's (a linear map of M*K features); None if one is unknown."""
    flops = [m.card.get("flops_per_image") for m in members]
    known_flops = [float(f) for f in flops if f is not None]
    meta_flops = 2 * len(members) * k * k + 6 * len(members) * k
    return sum(known_flops) + meta_flops if len(known_flops) == len(flops) else None


def _simplify(model: onnx.ModelProto, weight_bytes: int) -> tuple[onnx.ModelProto, bool, str]:
    if weight_bytes > 1_500_000_000:
        why = (
            f"{weight_bytes / 2**30:.2f} GiB of weights is beyond what onnxsim handles (2 GB protobuf limit)"
        )
        return model, False, f"skipped: {why}"
    try:
        from onnxsim import simplify

        simplified, ok = simplify(model)
    except Exception as e:  # onnxsim raises plain exceptions for graphs it cannot handle
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return model, False, f"skipped: onnxsim failed ({type(e).__name__}: {first})"
    if not ok:
        return model, False, "skipped: onnxsim's own check failed"
    before, after = len(model.graph.node), len(simplified.graph.node)
    return simplified, True, f"onnxsim: {before} -> {after} nodes"


def build_fused_file(
    members: Sequence[MemberModel],
    meta: MetaModel,
    out: Path,
    precision: str,
    cfg: FuseConfig,
    rng: np.random.Generator,
    tolerance: float,
    fp32_sha256: str | None = None,
    ood: OodModel | None = None,
    float_members: Mapping[str, str] | None = None,
) -> tuple[FusedFile, FusedGraph, SeparatePipeline]:
    """Build, save and verify one fused file (see the module docstring); ``tolerance`` vs separate;
    ``float_members``: an INT8 file's {member given as FP32: why}, written into its card."""
    fused = build_fused(members, meta, cfg.input_size, ood=ood)
    if precision != "fp32":
        note = "skipped: only the FP32 graph is simplified (onnxsim would fold quantised or FP16 weights)"
        model, simplified = fused.model, False
    elif not cfg.simplify:
        model, simplified, note = fused.model, False, "skipped: disabled"
    else:
        model, simplified, note = _simplify(fused.model, model_nbytes(fused.model))
    md = ensemble_metadata(members, meta, fused, precision, simplified, fp32_sha256, float_members)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, md.to_props())
    model.doc_string = f"cxr stacking ensemble ({precision}). {NOTICE}"
    external = save_onnx(model, out, cfg.external_data_threshold)  # one external data file near 2 GB
    onnx.checker.check_model(str(out), full_check=True)
    orders = {r.member: r.order for r in fused.resizes}
    # INT8 is compared on its graph's own QDQ arithmetic, without onnxruntime's fused integer kernels: on a CPU
    # without VNNI (AVX2) their u8s8 products saturate, and differently in the fused graph than in a member
    # alone; whether that changes answers on such a CPU is the INT8 verdict's question (per CPU kind), not this
    # check's, which proves the fusion right
    fused_kernels = precision != "int8"
    reference = SeparatePipeline(
        members, meta.path, fused.input_size, orders, cfg.threads, optimize=fused_kernels
    )
    parity = check_separate(
        out,
        reference,
        batches=cfg.batches,
        tolerance=tolerance,
        rng=rng,
        threads=cfg.threads,
        optimize=fused_kernels,
    )
    if fused.ood is not None:
        check_ood(out, fused.ood, 1e-3, cfg.threads, strict=precision == "fp32")
    in_float = None if float_members is None else dict(float_members)
    sha, size = file_sha256(out), onnx_size_bytes(out)
    return (
        FusedFile(precision, out, sha, size, external, simplified, note, parity, float_members=in_float),
        fused,
        reference,
    )


def drift_vs_fp32(
    fp32: Path, variant: Path, size: tuple[int, int], rng: np.random.Generator, threads: int | None
) -> dict[str, float]:
    """Probabilities of a variant ensemble vs the FP32 one on 8 seeded random images."""
    images = rng.integers(0, 256, size=(8, 1, *size), dtype=np.uint8)
    a = session(fp32, threads).run([OUTPUT_PROBABILITIES], {INPUT_IMAGE: images})[0]
    b = session(variant, threads).run([OUTPUT_PROBABILITIES], {INPUT_IMAGE: images})[0]
    return {
        "max_abs_diff_probabilities": float(np.max(np.abs(a - b))),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
    }
