"""`cxr fuse`: the members and the meta-learner as ONE verified ONNX graph, with its variants and report.

Takes: member ONNX paths in the meta-learner's order, ``stack/meta.onnx`` and a ``FuseConfig``. Makes:
``ensemble.onnx`` (uint8 ``image`` in; ``probabilities``, ``label``, ``member_probabilities`` and, given
``run_dir``, ``ood_score`` out), the asked-for ``.fp16``/``.int8`` variants (INT8 keeps in FP32 the members
without a usable INT8 file), optionally ``ensemble.heatmaps.onnx``, and ``fuse_report.json``/``.md`` ->
``FuseResult``. Every file is verified against the separate members + meta-learner; given ``run_dir``, top-1
against PyTorch + scikit-learn too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ModelError
from cxr.export.onnx_files import onnx_size_bytes, read_metadata
from cxr.fuse.fused_file import build_fused_file, drift_vs_fp32
from cxr.fuse.graph import FusedGraph, ResizeStep, fused_input_size
from cxr.fuse.heatmap_file import build_heatmap_file
from cxr.fuse.int8_check import (
    Int8Bar,
    check_int8,
    labelled_test_images,
    not_meaningful_records,
    summary,
    unlabelled_images,
    write_int8_records,
)
from cxr.fuse.members import (
    MemberModel,
    MetaModel,
    check_compatible,
    graph_spec,
    int8_members,
    load_member,
    load_meta,
    variant_path,
)
from cxr.fuse.ood import OodModel, fit_ood
from cxr.fuse.precision_check import check_openvino_bf16, real_images, write_record
from cxr.fuse.report import false_refusal_text, write_fuse_report
from cxr.fuse.types import FuseConfig, FusedFile, FuseResult
from cxr.fuse.verify import check_end_to_end, measure_latency
from cxr.openvino_session import BF16_RECORD
from cxr.session import file_sha256
from cxr.spec import CARD_CALIBRATION, PreprocessSpec

log = logging.getLogger(__name__)


def fuse(members: Sequence[Path], meta: Path, cfg: FuseConfig) -> FuseResult:
    """Fuse, verify and describe the ensemble (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    meta_model = load_meta(Path(meta))
    loaded = [load_member(Path(p)) for p in members]
    check_compatible(loaded, meta_model)
    out = Path(cfg.out)
    ood, ood_note = _fit_ood(loaded, cfg)
    fp32, fused, reference = build_fused_file(
        loaded, meta_model, out, "fp32", cfg, rng, cfg.tolerance, ood=ood
    )
    warnings = _resize_warnings(fused.resizes) + ([ood_note] if ood_note else [])
    if skipped := (meta_model.info.get(CARD_CALIBRATION) or {}).get("skipped"):
        warnings.append(f"the meta-learner's {skipped}: its probabilities are not temperature-scaled")
    verified: dict[str, dict[str, Any]] = {}
    spec = graph_spec(loaded, fused.input_size)
    source = cfg.check_images or cfg.run_dir
    record, images = None, None
    if cfg.bf16_check and source is not None:
        images = real_images(Path(source), spec, cfg.bf16_check_images, cfg.seed)
        record = check_openvino_bf16(out, images, min_agreement=cfg.min_agreement, threads=cfg.threads)
    if record is not None:
        write_record(out, record)  # before the variants: they name the FP32 file's final sha256
        fp32 = replace(fp32, sha256=file_sha256(out), bytes=onnx_size_bytes(out))
        verified[BF16_RECORD] = record
        if not record["accepted"]:
            warnings.append(f"OpenVINO BF16 is not offered for {out.name}: {record['reason']}")
    variants, skipped = _build_variants(loaded, meta_model, fp32, fused, cfg, rng, ood)
    warnings += [f"{variant} ensemble not built: {why}" for variant, why in skipped.items()]
    if "int8" in variants:
        in_float = variants["int8"].float_members or {}
        warnings += [f"member '{n}' runs in FP32 in the INT8 ensemble: {why}" for n, why in in_float.items()]
    if "int8" in variants and cfg.int8_check and (cfg.run_dir or cfg.check_images) is not None:
        fp32, variants["int8"], records, notes = _int8_verdict(loaded, fp32, variants["int8"], spec, cfg)
        verified.update(records)
        warnings += notes
    heatmaps = None
    if cfg.heatmaps:
        built = build_heatmap_file(loaded, meta_model, out, fp32.sha256, cfg, reference, rng, ood)
        if isinstance(built, str):
            warnings.append(f"heatmap ensemble not built: {built}")
        else:
            heatmaps = built
            warnings += [
                f"member '{n}' is left out of the heatmaps: {why}" for n, why in built.excluded.items()
            ]
            if (
                images is not None
            ):  # the twin is its own graph: `--precision auto` runs it in BF16 only after this
                twin = check_openvino_bf16(
                    built.path, images, min_agreement=cfg.min_agreement, threads=cfg.threads
                )
                if twin is not None:
                    write_record(built.path, twin)
                    heatmaps = replace(built, sha256=file_sha256(built.path))
                    if not twin["accepted"]:
                        warnings.append(
                            f"OpenVINO BF16 is not offered for {built.path.name}: {twin['reason']}"
                        )
    e2e = None
    if cfg.run_dir is not None:  # vs the members' PyTorch test predictions + the scikit-learn meta-learner
        e2e = check_end_to_end(
            out,
            Path(cfg.run_dir),
            meta_model.path.parent,
            [m.name for m in loaded],
            spec,
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
        files={"fp32": fp32, **variants},
        skipped_variants=skipped,
        end_to_end=e2e,
        latency=latency,
        resizes=tuple(_resize_row(r) for r in fused.resizes),
        warnings=tuple(warnings),
        verified_precisions=verified,
        heatmaps=heatmaps,
        ood=None if fused.ood is None else fused.ood.to_card(),
    )
    for w in warnings:
        log.warning("%s", w)
    if cfg.report:
        js, md = write_fuse_report(result, out.parent, meta_model.info, loaded)
        result = replace(result, report_json=js, report_md=md)
    return result


def _fit_ood(loaded: Sequence[MemberModel], cfg: FuseConfig) -> tuple[OodModel | None, str | None]:
    """The out-of-distribution score fitted on ``cfg.run_dir`` (None and why not, when it cannot be)."""
    if not cfg.ood:
        return None, None
    if cfg.run_dir is None:
        return None, "no out-of-distribution score: it is fitted on a run directory's images (give RUN_DIR)"
    size = fused_input_size(loaded, cfg.input_size)
    fitted = fit_ood(
        loaded,
        Path(cfg.run_dir),
        size,
        max_train=cfg.ood_max_train,
        quantile=cfg.ood_quantile,
        seed=cfg.seed,
        threads=cfg.threads,
    )
    if isinstance(fitted, str):
        return None, f"no out-of-distribution score: {fitted}"
    return fitted, None


def _int8_verdict(
    loaded: Sequence[MemberModel],
    fp32: FusedFile,
    int8: FusedFile,
    spec: PreprocessSpec,
    cfg: FuseConfig,
) -> tuple[FusedFile, FusedFile, dict[str, dict[str, Any]], list[str]]:
    """The INT8 graph's verdict on the run's test images (``cxr.fuse.int8_check``), written into both files."""
    fused_meta = read_metadata(fp32.path)
    bar = Int8Bar(cfg.min_agreement, cfg.int8_sensitivity_points)
    if random := [m.name for m in loaded if m.meta.card.get("random_weights")]:
        why = (
            f"{', '.join(random)} {'has' if len(random) == 1 else 'have'} random weights (a speed benchmark)"
        )
        records = not_meaningful_records(int8.path, why, bar, float_members=list(int8.float_members or {}))
        notes: list[str] = []
    else:
        if cfg.run_dir is not None:
            data = labelled_test_images(Path(cfg.run_dir), spec, fused_meta.classes)
        else:  # a folder without labels: "not meaningful" or "not verified", never accepted
            data = unlabelled_images(Path(str(cfg.check_images)), spec, cfg.bf16_check_images, cfg.seed)
        if isinstance(data, str):
            return fp32, int8, {}, [f"INT8 ensemble not verified, so not offered: {data}"]
        layers = {}
        for m in loaded:
            if m.name in (int8.float_members or {}):  # run in FP32: no INT8 settings
                continue
            settings = read_metadata(variant_path(m.path, "int8")).card.get("variant_settings") or {}
            layers[m.name] = list(settings.get("kept_float_by_accuracy_control") or [])
        records, notes = check_int8(
            fp32.path,
            int8.path,
            data,
            classes=fused_meta.classes,
            card=fused_meta.card,
            members=[m.name for m in loaded],
            layers=layers,
            bar=bar,
            threads=cfg.threads,
            float_members=list(int8.float_members or {}),
        )
    final = write_int8_records(fp32.path, int8.path, records)
    fp32 = replace(fp32, sha256=file_sha256(fp32.path), bytes=onnx_size_bytes(fp32.path))
    int8 = replace(int8, sha256=final, bytes=onnx_size_bytes(int8.path))
    refused = [
        f"INT8 is not offered for {name} on a {kind} CPU: {e['reason']}"
        for name, rec in records.items()
        for kind, e in rec["kinds"].items()
        if not e["accepted"]
    ]
    return fp32, int8, {n: {**r, "sha256": final} for n, r in records.items()}, notes + refused


def _resize_warnings(resizes: Sequence[ResizeStep]) -> list[str]:
    """What each in-graph resize means for accuracy, and any probe pixels it still gets wrong."""
    warnings: list[str] = []
    for r in resizes:
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
    return warnings


def _build_variants(
    loaded: Sequence[MemberModel],
    meta_model: MetaModel,
    fp32: FusedFile,
    fused: FusedGraph,
    cfg: FuseConfig,
    rng: np.random.Generator,
    ood: OodModel | None = None,
) -> tuple[dict[str, FusedFile], dict[str, str]]:
    """Each asked-for variant ensemble: FP16 from every member's FP16 file (when every member has one); INT8
    from the members' INT8 files, each member without a usable one in FP32 (``int8_members``).

    Returns the built files and, per variant not built, why.
    """
    files: dict[str, FusedFile] = {}
    skipped: dict[str, str] = {}
    for variant in cfg.variants:
        in_float: dict[str, str] | None = None
        if variant == "int8":
            var_members, in_float = int8_members(loaded)
            if len(in_float) == len(loaded):
                why = "; ".join(f"{n}: {w}" for n, w in in_float.items())
                skipped[variant] = f"no member has a usable INT8 file ({why})"
                continue
        else:
            paths = [variant_path(m.path, variant) for m in loaded]
            if missing := [p.name for p in paths if not p.is_file()]:
                skipped[variant] = f"member variant(s) missing: {', '.join(missing)}"
                continue
            var_members = [load_member(p) for p in paths]
        check_compatible(var_members, meta_model)
        var_out = fp32.path.with_name(fp32.path.name.removesuffix(".onnx") + f".{variant}.onnx")
        built, _, _ = build_fused_file(
            var_members,
            meta_model,
            var_out,
            variant,
            cfg,
            rng,
            cfg.variant_tolerance,
            fp32.sha256,
            ood,
            in_float,
        )
        drift = drift_vs_fp32(fp32.path, var_out, fused.input_size, rng, cfg.threads)
        files[variant] = replace(built, drift_vs_fp32=drift)
    return files, skipped


def _resize_row(r: ResizeStep) -> dict[str, Any]:
    return {
        "member": r.member,
        "from": list(r.from_size),
        "to": list(r.to_size),
        "pass_order": r.order,
        "probe_mismatches": r.probe_mismatches,
    }


def run_members(run_dir: Path, meta: Path | None = None) -> tuple[list[Path], Path]:
    """(member ONNX paths in the meta-learner's order, meta.onnx path) for a run directory."""
    run_dir = Path(run_dir)
    meta_path = Path(meta) if meta is not None else run_dir / "stack" / "meta.onnx"
    order = load_meta(meta_path).member_order
    if not order:
        raise ModelError(f"{meta_path} records no member order", hint="re-run `cxr stack`", path=meta_path)
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
    if result.ood is not None:
        o = result.ood
        lines.append(
            f"  out-of-distribution score: fitted on {o['n_train']} train images, threshold {o['threshold']:.3g} "
            f"(the {o['quantile']:g} quantile of held-out scores; {false_refusal_text(o)}; verified vs numpy)"
        )
    if result.heatmaps is not None:
        hm = result.heatmaps
        lines.append(
            f"  heatmaps {hm.path} (members mapped: {', '.join(hm.mapped)}; class-map mean = logits within "
            f"{hm.max_abs_logit_identity:.2g}; vs numpy rule {hm.max_abs_diff_vs_numpy:.2g}; verified)"
        )
    for name, rec in result.verified_precisions.items():
        if "kinds" in rec:  # an INT8 record: a verdict per CPU kind
            lines.append(f"  {summary(name, rec)}")
        else:
            lines.append(f"  {name}: {'accepted' if rec['accepted'] else 'refused'} ({rec['reason']})")
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
