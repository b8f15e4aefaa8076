"""One fused file of one precision: wire the graph, simplify (FP32), add metadata, save, check, verify.

Takes: checked members (FP32, or one variant of each), the meta-learner, the output path, the precision
and the ``FuseConfig``. Makes: the file (external data near the 2 GB protobuf limit), checked with
``onnx.checker`` and compared with the separate members + meta-learner within ``tolerance`` -> a
``FusedFile``, plus the ``FusedGraph`` and the ``SeparatePipeline`` reference; ``drift_vs_fp32`` compares
a variant ensemble with the FP32 one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from cxr.export.onnx_files import model_nbytes, onnx_size_bytes, save_onnx
from cxr.fuse.graph import FusedGraph, build_fused
from cxr.fuse.members import MemberModel, MetaModel
from cxr.fuse.metadata import ensemble_metadata
from cxr.fuse.ood import OodModel, check_ood
from cxr.fuse.types import FuseConfig, FusedFile
from cxr.fuse.verify import SeparatePipeline, check_separate, session
from cxr.labels import NOTICE
from cxr.session import file_sha256
from cxr.spec import INPUT_IMAGE, OUTPUT_PROBABILITIES


def _simplify(model: onnx.ModelProto, weight_bytes: int) -> tuple[onnx.ModelProto, bool, str]:
    if weight_bytes > 1_500_000_000:
        return (
            model,
            False,
            f"skipped: {weight_bytes / 2**30:.2f} GiB of weights is beyond what onnxsim handles (2 GB protobuf limit)",
        )
    try:
        from onnxsim import simplify

        simplified, ok = simplify(model)
    except Exception as e:  # onnxsim raises plain exceptions for graphs it cannot handle
        return (
            model,
            False,
            f"skipped: onnxsim failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
        )
    if not ok:
        return model, False, "skipped: onnxsim's own check failed"
    before, after = len(model.graph.node), len(simplified.graph.node)
    return simplified, True, f"onnxsim: {before} -> {after} nodes"


def _save(model: onnx.ModelProto, path: Path, threshold: int) -> bool:
    """Save ``model`` (one external data file when the weights approach the protobuf limit) and check it."""
    external = save_onnx(model, path, threshold)
    onnx.checker.check_model(str(path), full_check=True)
    return external


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
) -> tuple[FusedFile, FusedGraph, SeparatePipeline]:
    """Build, save and verify one fused file (see the module docstring); ``tolerance`` vs separate."""
    fused = build_fused(members, meta, cfg.input_size, ood=ood)
    weight_bytes = model_nbytes(fused.model)
    model, simplified, note = (
        fused.model,
        False,
        "skipped: only the FP32 graph is simplified (onnxsim would fold quantised or FP16 weights)",
    )
    if precision == "fp32":
        if cfg.simplify:
            model, simplified, note = _simplify(fused.model, weight_bytes)
        else:
            note = "skipped: disabled"
    md = ensemble_metadata(members, meta, fused, precision, simplified, fp32_sha256)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, md.to_props())
    model.doc_string = f"cxr stacking ensemble ({precision}). {NOTICE}"
    external = _save(model, out, cfg.external_data_threshold)
    orders = {r.member: r.order for r in fused.resizes}
    reference = SeparatePipeline(members, meta.path, fused.input_size, orders, cfg.threads)
    parity = check_separate(
        out, reference, batches=cfg.batches, tolerance=tolerance, rng=rng, threads=cfg.threads
    )
    if fused.ood is not None:
        check_ood(out, fused.ood, 1e-3, cfg.threads, strict=precision == "fp32")
    return (
        FusedFile(precision, out, file_sha256(out), onnx_size_bytes(out), external, simplified, note, parity),
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
