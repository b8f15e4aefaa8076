"""The heatmap variant of the fused ensemble, ``<stem>.heatmaps.onnx``, built and verified beside the FP32 one.

Takes: the checked FP32 members, the meta-learner, the plain file's path and sha256, the ``FuseConfig`` and
its ``SeparatePipeline``. Makes: a ``HeatmapFile``, verified three ways (parity with the separate members;
each class map's spatial mean equals its logits; the heatmaps equal the rule computed in numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from cxr.errors import VerificationError
from cxr.fuse.class_maps import CLASS_MAPS
from cxr.fuse.fused_file import ensemble_metadata
from cxr.fuse.graph import build_fused
from cxr.fuse.heatmaps import HeatmapPlan, plan_heatmaps
from cxr.fuse.members import MemberModel, MetaModel
from cxr.fuse.ood import OodModel
from cxr.fuse.resize import member_input
from cxr.fuse.types import FuseConfig, HeatmapFile
from cxr.fuse.verify import SeparatePipeline, check_separate, session
from cxr.labels import NOTICE
from cxr.session import file_sha256
from cxr.spec import INPUT_IMAGE, OUTPUT_CLASS_HEATMAPS, OUTPUT_HEATMAP, OUTPUT_LABEL, OUTPUT_PROBABILITIES

MAP_TOLERANCE = 1e-4  # class maps vs logits, and heatmaps vs numpy, relative to the values' scale


def heatmap_path(plain: Path) -> Path:
    """``ensemble.onnx`` -> ``ensemble.heatmaps.onnx``."""
    return plain.with_name(plain.name.removesuffix(".onnx") + ".heatmaps.onnx")


def build_heatmap_file(
    members: Sequence[MemberModel],
    meta: MetaModel,
    plain: Path,
    plain_sha256: str,
    cfg: FuseConfig,
    reference: SeparatePipeline,
    rng: np.random.Generator,
    ood: OodModel | None = None,
) -> HeatmapFile | str:
    """Build and verify the heatmap variant; a string says why none was built (no member has a map)."""
    plan = plan_heatmaps(members, meta, cfg.threads)
    if not plan.maps:
        return "no member has an exact class map: " + "; ".join(f"{n}: {r}" for n, r in plan.excluded.items())
    out = heatmap_path(plain)
    fused = build_fused(members, meta, cfg.input_size, heatmaps=plan, ood=ood)
    md = ensemble_metadata(members, meta, fused, "fp32", False, plain_sha256)
    heatmaps = plan.to_card([m.name for m in members], list(meta.info["classes"]))
    card = {**dict(md.card), "variant": "heatmaps", "heatmaps": heatmaps}
    onnx.helper.set_model_props(fused.model, replace(md, card=card).to_props())
    fused.model.doc_string = f"cxr stacking ensemble with heatmaps (fp32). {NOTICE}"
    onnx.save_model(fused.model, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    parity = check_separate(
        out, reference, batches=cfg.batches, tolerance=cfg.tolerance, rng=rng, threads=cfg.threads
    )
    identity = _check_identity(plan, members, rng, cfg.threads)
    diff = _check_against_numpy(out, plan, reference, rng, cfg.threads)
    return HeatmapFile(out, file_sha256(out), parity, tuple(plan.maps), dict(plan.excluded), identity, diff)


def _check_identity(
    plan: HeatmapPlan, members: Sequence[MemberModel], rng: np.random.Generator, threads: int | None
) -> float:
    """Max |spatial mean of the class map - logit| over the mapped members, on seeded random inputs."""
    worst = 0.0
    for m in members:
        if m.name not in plan.models:
            continue
        sess = session(plan.models[m.name].SerializeToString(), threads)
        x = rng.standard_normal((2, m.meta.preprocess.channels, *m.input_size)).astype(np.float32)
        logits, maps = sess.run([m.output_name, CLASS_MAPS], {m.input_name: x})
        diff = float(np.max(np.abs(maps.mean(axis=(2, 3)) - logits)))
        if diff > MAP_TOLERANCE * max(1.0, float(np.max(np.abs(logits)))):
            raise VerificationError(
                f"member '{m.name}': its class map's spatial mean differs from its logits by {diff:.3g}",
                hint="report this as a cxr bug with the member file; fuse without --heatmaps meanwhile",
                path=m.path,
            )
        worst = max(worst, diff)
    return worst


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of a half-pixel bilinear resize with edge clamping (ONNX Resize, torch)."""
    pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0.0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    mat = np.zeros((dst, src))
    np.add.at(mat, (np.arange(dst), lo), 1.0 - frac)
    np.add.at(mat, (np.arange(dst), hi), frac)
    return mat


def combine_maps(maps: Sequence[np.ndarray], weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The rule in numpy: min-max each [N, K, h, w] map, resize to ``size``, sum weighted ([M', K])."""
    total = np.zeros((maps[0].shape[0], maps[0].shape[1], *size))
    for cam, w in zip(maps, weights, strict=True):
        lo = cam.min(axis=(2, 3), keepdims=True)
        hi = cam.max(axis=(2, 3), keepdims=True)
        unit = (cam - lo) / (hi - lo + 1e-6)
        a = bilinear_matrix(cam.shape[2], size[0])
        b = bilinear_matrix(cam.shape[3], size[1])
        total += np.einsum("Hh,nkhw,Ww->nkHW", a, unit, b) * w.reshape(1, -1, 1, 1)
    return total


def _check_against_numpy(
    path: Path, plan: HeatmapPlan, reference: SeparatePipeline, rng: np.random.Generator, threads: int | None
) -> float:
    """Fused heatmaps vs the rule applied in numpy to the separately run members' class maps."""
    h, w = reference.fused_size
    images = rng.integers(0, 256, size=(3, 1, h, w), dtype=np.uint8)
    sess = session(path, threads)
    heat, class_heat, label, probs = sess.run(
        [OUTPUT_HEATMAP, OUTPUT_CLASS_HEATMAPS, OUTPUT_LABEL, OUTPUT_PROBABILITIES], {INPUT_IMAGE: images}
    )
    maps, weights = [], []
    for i, m in enumerate(reference.members):
        if m.name not in plan.models:
            continue
        order = reference.orders.get(m.name, "hv")
        x = member_input(images.astype(np.float32), m.input_size, order, m.meta.preprocess)
        msess = session(plan.models[m.name].SerializeToString(), threads)
        maps.append(msess.run([CLASS_MAPS], {m.input_name: x})[0])
        weights.append(plan.weights[i])
    want = combine_maps(maps, np.asarray(weights), (h, w))
    diff = float(np.max(np.abs(class_heat - want)))
    picked = class_heat[np.arange(len(label)), label]
    if diff > MAP_TOLERANCE or not np.array_equal(picked, heat) or not np.array_equal(label, probs.argmax(1)):
        raise VerificationError(
            f"{path}: the in-graph heatmaps differ from the numpy reference by {diff:.3g} "
            f"(tolerance {MAP_TOLERANCE:g}), or 'heatmap' is not the predicted class's map",
            hint="report this as a cxr bug with the member files; fuse without --heatmaps meanwhile",
            path=path,
        )
    return diff
