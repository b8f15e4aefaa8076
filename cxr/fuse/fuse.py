"""`cxr fuse`: the five members and the meta-learner as ONE verified ONNX graph.

Takes: member ONNX paths in the meta-learner's member order, ``stack/meta.onnx`` and a ``FuseConfig``.
Makes: ``ensemble.onnx`` (input ``image`` uint8 [N, 1, H, W]; outputs ``probabilities`` [N, K], ``label``
[N], ``member_probabilities`` [N, M, K]; cxr metadata with ``input_format="uint8_gray"``), optionally
``ensemble.fp16.onnx`` / ``ensemble.int8.onnx`` built from the members' variants (only when every member
has that variant), and ``fuse_report.json`` / ``.md`` beside them -> ``FuseResult``.

Order of work: check the parts (``fuse_members``), wire the graph (``fuse_graph``), simplify with onnxsim
(FP32 only, skipped above the protobuf limit), attach metadata, save (external data near the 2 GB protobuf
limit), check with ``onnx.checker``, then verify (``fuse_verify``): equal to the separate members + meta
within ``tolerance`` at batch 1 and 8, and, given ``run_dir``, top-1 identical to PyTorch + scikit-learn on
the test split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cxr import __version__
from cxr.errors import ConfigError, ModelError
from cxr.export.onnx_files import model_nbytes, onnx_size_bytes, save_onnx
from cxr.fuse.graph import FusedGraph, build_fused
from cxr.fuse.members import (
    VARIANT_SUFFIXES,
    MemberModel,
    MetaModel,
    check_compatible,
    load_member,
    load_meta,
    variant_path,
)
from cxr.fuse.verify import (
    EndToEndReport,
    ParityReport,
    SeparatePipeline,
    check_end_to_end,
    check_separate,
    measure_latency,
)
from cxr.labels import NOTICE
from cxr.session import file_sha256
from cxr.spec import ModelMetadata, PreprocessSpec

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
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


@dataclass(frozen=True)
class FuseConfig:
    out: Path
    variants: tuple[str, ...] = ()  # "fp16", "int8": built from <name>.<variant>.onnx beside each member
    input_size: tuple[int, int] | None = None  # None: the largest member input size
    simplify: bool = True
    run_dir: Path | None = None  # given: verify end to end against the PyTorch test predictions
    e2e_max_images: int | None = None
    e2e_strict: bool = True
    batches: tuple[int, ...] = (1, 8)
    tolerance: float = 1e-5
    variant_tolerance: float = 1e-3
    external_data_threshold: int = (
        1_800_000_000  # bytes of weights above which the graph is saved with external data
    )
    benchmark_runs: int = 0  # > 0: measure fused vs separate latency at batch 1
    threads: int | None = None
    seed: int = 0
    report: bool = True

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANT_SUFFIXES]
        if unknown:
            raise ConfigError(
                f"unknown variant(s) {', '.join(unknown)}", hint=f"use any of {', '.join(VARIANT_SUFFIXES)}"
            )
        if self.input_size is not None and min(self.input_size) < 8:
            raise ConfigError(f"input_size {self.input_size} is too small", hint="use at least 8x8")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"batches {self.batches} must be positive", hint="for example 1 8")


@dataclass(frozen=True)
class FusedFile:
    precision: str
    path: Path
    sha256: str
    bytes: int
    external_data: bool
    simplified: bool
    simplify_note: str
    parity: ParityReport
    drift_vs_fp32: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "path": str(self.path),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "external_data": self.external_data,
            "simplified": self.simplified,
            "simplify_note": self.simplify_note,
            "parity_vs_separate": self.parity.to_dict(),
            "drift_vs_fp32": self.drift_vs_fp32,
        }


@dataclass(frozen=True)
class FuseResult:
    path: Path
    input_size: tuple[int, int]
    member_order: tuple[str, ...]
    files: dict[str, FusedFile]  # "fp32", and each built variant
    skipped_variants: dict[str, str]
    end_to_end: EndToEndReport | None
    latency: dict[str, Any] | None
    resizes: tuple[dict[str, Any], ...]
    report_json: Path | None = None
    report_md: Path | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def parity(self) -> ParityReport:
        return self.files["fp32"].parity


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


def _metadata(
    members: Sequence[MemberModel],
    meta: MetaModel,
    fused: FusedGraph,
    precision: str,
    simplified: bool,
    fp32_sha256: str | None = None,
) -> ModelMetadata:
    info = meta.info
    k = len(info["classes"])
    flops = [m.card.get("flops_per_image") for m in members]
    known_flops = [float(f) for f in flops if f is not None]
    meta_flops = 2 * len(members) * k * k + 6 * len(members) * k
    card: dict[str, Any] = {
        "kind": "ensemble",
        "name": "cxr-ensemble",
        "members": [
            {
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
            for m in members
        ],
        "member_order": [m.name for m in members],
        "dataset": members[0].card.get("dataset"),
        "test_metrics": info.get("test_metrics"),
        "meta": {
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
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "flops_per_image": sum(known_flops) + meta_flops if len(known_flops) == len(flops) else None,
        "precision": precision,
        "runtime_preprocess": list(RUNTIME_STEPS),
        "graph_preprocess": list(GRAPH_STEPS),
        "resize_in_graph": [
            {"member": r.member, "from": list(r.from_size), "to": list(r.to_size), "pass_order": r.order}
            for r in fused.resizes
        ],
        "simplified": simplified,
        "notice": NOTICE,
    }
    if fp32_sha256 is not None:  # a variant names the FP32 ensemble it was built beside
        card["fp32_sha256"] = fp32_sha256
    spec = members[0].meta.preprocess
    pre = PreprocessSpec(input_size=fused.input_size, channels=spec.channels, mean=spec.mean, std=spec.std)
    return ModelMetadata(classes=tuple(info["classes"]), preprocess=pre, input_format="uint8_gray", card=card)


def _save(model: onnx.ModelProto, path: Path, threshold: int) -> bool:
    """Save ``model`` (one external data file when the weights approach the protobuf limit) and check it."""
    external = save_onnx(model, path, threshold)
    onnx.checker.check_model(str(path), full_check=True)
    return external


def _build_one(
    members: Sequence[MemberModel],
    meta: MetaModel,
    out: Path,
    precision: str,
    cfg: FuseConfig,
    rng: np.random.Generator,
    tolerance: float,
    fp32_sha256: str | None = None,
) -> tuple[FusedFile, FusedGraph, SeparatePipeline]:
    fused = build_fused(members, meta, cfg.input_size)
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
    md = _metadata(members, meta, fused, precision, simplified, fp32_sha256)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, md.to_props())
    model.doc_string = f"cxr stacking ensemble ({precision}). {NOTICE}"
    external = _save(model, out, cfg.external_data_threshold)
    orders = {r.member: r.order for r in fused.resizes}
    reference = SeparatePipeline(members, meta.path, fused.input_size, orders, cfg.threads)
    parity = check_separate(
        out, reference, batches=cfg.batches, tolerance=tolerance, rng=rng, threads=cfg.threads
    )
    return (
        FusedFile(precision, out, file_sha256(out), onnx_size_bytes(out), external, simplified, note, parity),
        fused,
        reference,
    )


def _drift(
    fp32: Path, variant: Path, size: tuple[int, int], rng: np.random.Generator, threads: int | None
) -> dict[str, float]:
    from cxr.fuse.verify import session

    images = rng.integers(0, 256, size=(8, 1, *size), dtype=np.uint8)
    a = session(fp32, threads).run(["probabilities"], {"image": images})[0]
    b = session(variant, threads).run(["probabilities"], {"image": images})[0]
    return {
        "max_abs_diff_probabilities": float(np.max(np.abs(a - b))),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
    }


def fuse(members: Sequence[Path], meta: Path, cfg: FuseConfig) -> FuseResult:
    """Fuse, verify and describe the ensemble (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    meta_model = load_meta(Path(meta))
    loaded = [load_member(Path(p)) for p in members]
    check_compatible(loaded, meta_model)
    out = Path(cfg.out)
    warnings: list[str] = []
    fp32, fused, reference = _build_one(loaded, meta_model, out, "fp32", cfg, rng, cfg.tolerance)
    files = {"fp32": fp32}
    for r in fused.resizes:
        warnings.append(
            f"member '{r.member}' takes {r.to_size[0]}x{r.to_size[1]} but the graph input is "
            f"{r.from_size[0]}x{r.from_size[1]}: the graph resizes again (Pillow-exact), which differs slightly from "
            "resizing the original image as training did (`cxr train base` makes the val/test predictions through "
            "the same two resizes, so stacking and the end-to-end check see what ships)"
        )
        if r.probe_mismatches:
            warnings.append(
                f"member '{r.member}': the in-graph resize differs from this Pillow on {r.probe_mismatches} probe pixels"
            )
    skipped: dict[str, str] = {}
    for variant in cfg.variants:
        paths = [variant_path(m.path, variant) for m in loaded]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            skipped[variant] = f"member variant(s) missing: {', '.join(missing)}"
            warnings.append(f"{variant} ensemble not built: {skipped[variant]}")
            continue
        var_members = [load_member(p) for p in paths]
        check_compatible(var_members, meta_model)
        var_out = out.with_name(out.name.removesuffix(".onnx") + f".{variant}.onnx")
        built, _, _ = _build_one(
            var_members, meta_model, var_out, variant, cfg, rng, cfg.variant_tolerance, fp32.sha256
        )
        drift = _drift(out, var_out, fused.input_size, rng, cfg.threads)
        files[variant] = replace(built, drift_vs_fp32=drift)
    e2e = None
    if cfg.run_dir is not None:
        e2e = check_end_to_end(
            out,
            Path(cfg.run_dir),
            meta_model.path.parent,
            [m.name for m in loaded],
            PreprocessSpec(
                input_size=fused.input_size,
                channels=loaded[0].meta.preprocess.channels,
                mean=loaded[0].meta.preprocess.mean,
                std=loaded[0].meta.preprocess.std,
            ),
            max_images=cfg.e2e_max_images,
            threads=cfg.threads,
            strict=cfg.e2e_strict,
            resized=[r.member for r in fused.resizes],
        )
    latency = (
        measure_latency(out, reference, runs=cfg.benchmark_runs, rng=rng, threads=cfg.threads)
        if cfg.benchmark_runs > 0
        else None
    )
    result = FuseResult(
        path=out,
        input_size=fused.input_size,
        member_order=tuple(m.name for m in loaded),
        files=files,
        skipped_variants=skipped,
        end_to_end=e2e,
        latency=latency,
        resizes=tuple(
            {
                "member": r.member,
                "from": list(r.from_size),
                "to": list(r.to_size),
                "pass_order": r.order,
                "probe_mismatches": r.probe_mismatches,
            }
            for r in fused.resizes
        ),
        warnings=tuple(warnings),
    )
    for w in warnings:
        log.warning("%s", w)
    if cfg.report:
        from cxr.fuse.report import write_fuse_report

        js, md = write_fuse_report(result, out.parent, meta_model.info, loaded)
        result = replace(result, report_json=js, report_md=md)
    return result


def run_members(run_dir: Path, meta: Path | None = None) -> tuple[list[Path], Path]:
    """(member ONNX paths in the meta-learner's order, meta.onnx path) for a run directory."""
    run_dir = Path(run_dir)
    meta_path = Path(meta) if meta is not None else run_dir / "stack" / "meta.onnx"
    order = load_meta(meta_path).member_order
    if not order:
        raise ModelError(
            f"{meta_path} records no member order", hint="re-run `cxr train stack`", path=meta_path
        )
    return [run_dir / "onnx" / f"{name}.onnx" for name in order], meta_path


def describe(result: FuseResult) -> str:
    """A few lines for the CLI: files, parity, end-to-end check, latency."""
    lines = [
        f"fused {len(result.member_order)} members ({', '.join(result.member_order)}) at {result.input_size[0]}x{result.input_size[1]}"
    ]
    for f in result.files.values():
        drift = f" | vs fp32: {json.dumps(f.drift_vs_fp32)}" if f.drift_vs_fp32 else ""
        lines.append(
            f"  {f.precision:5s} {f.path} ({f.bytes / 2**20:.1f} MiB{', external data' if f.external_data else ''}) "
            f"max |dp| vs separate = {max(f.parity.max_abs_diff_probabilities, f.parity.max_abs_diff_member_probabilities):.2g}"
            f"{drift}"
        )
    for v, why in result.skipped_variants.items():
        lines.append(f"  {v:5s} not built: {why}")
    if result.end_to_end is not None:
        e = result.end_to_end
        lines.append(
            f"  end to end vs PyTorch + scikit-learn on {e.n} test images: top-1 "
            f"{'identical' if e.top1_identical else f'differs on {len(e.mismatches)}'}, max |dp| = {e.max_abs_diff_probabilities:.2g}"
        )
    if result.latency is not None:
        lat = result.latency
        lines.append(
            f"  batch-1 latency: fused {lat['fused_ms_median']:.1f} ms vs separate sessions {lat['separate_ms_median']:.1f} ms"
        )
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines)
