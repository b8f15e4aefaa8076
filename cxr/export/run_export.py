"""`cxr export RUN_DIR` and `cxr verify RUN_DIR`: export, verify and derive variants for every trained member.

Takes: a ``RunExportConfig`` (``RUN_DIR/members/<name>/`` checkpoints and, when found, the split manifest).
Makes, in ``RUN_DIR/onnx/``: ``<name>.onnx`` (+ ``.fp16.onnx`` / ``.int8.onnx``) and
``export_report.{json,md}`` (``verify_report.*`` for a verification run), and a ``RunExportResult``. A member
whose FP32 graph fails verification is renamed ``<name>.onnx.rejected``; with ``strict`` the run then ends
in ``VerificationError`` naming it, after the report is written.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError, CxrError, DataError, ModelError, VerificationError
from cxr.export.export_types import ExportConfig
from cxr.export.inputs import InputPool
from cxr.export.onnx_export import check_opset, export_onnx, export_versions
from cxr.export.onnx_files import external_data_path, onnx_sha256, read_metadata
from cxr.export.quantize import (
    VARIANTS,
    Fp16Config,
    Int8Config,
    VariantResult,
    make_fp16,
    make_int8,
    variant_path,
    variant_verify_config,
)
from cxr.export.report import (
    MEMBERS_DIR,
    ONNX_DIR,
    REJECTED_SUFFIX,
    MemberReport,
    RunExportConfig,
    RunExportResult,
    write_run_report,
)
from cxr.export.verify import VerifyConfig, verify_against_onnx, verify_onnx
from cxr.spec import ModelMetadata, PreprocessSpec

log = logging.getLogger(__name__)


def _select_members(run_dir: Path, models: Sequence[str] | None) -> list[Path]:
    """The member folders of ``run_dir`` (all, or those named), with a did-you-mean for unknown names."""
    members = Path(run_dir) / MEMBERS_DIR
    if not Path(run_dir).is_dir():
        raise DataError(f"run directory {run_dir} does not exist", hint="pass the RUN_DIR of `cxr train`")
    available = sorted(p for p in members.iterdir() if p.is_dir()) if members.is_dir() else []
    if not available:
        raise DataError(
            f"no trained members in {members}",
            hint="train them first (`cxr train base --config CONFIG --all`), then export the run directory",
            path=members,
        )
    if models is None:
        return available
    by_name = {p.name: p for p in available}
    unknown = [m for m in models if m not in by_name]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(by_name), n=3)
        raise ConfigError(
            f"unknown member(s) {', '.join(unknown)} in {members}",
            hint=(f"did you mean {', '.join(close)}? " if close else "") + f"available: {', '.join(by_name)}",
        )
    return [by_name[m] for m in dict.fromkeys(models)]


def _load_member(member_dir: Path, which: str = "best") -> Any:
    """``cxr.train.checkpoint.load_checkpoint`` with errors that say what to do."""
    try:
        from cxr.train.checkpoint import load_checkpoint
    except ImportError as e:
        raise ModelError(
            f"cannot load checkpoints: {e}",
            hint="install the training extra: pip install -e '.[train]' in a clone of cxr",
        ) from e
    try:
        return load_checkpoint(member_dir, which)
    except CxrError:
        raise
    except Exception as e:  # timm/torch/safetensors errors on a foreign or damaged checkpoint
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "re-train the member with this cxr, or install the cxr version that wrote the checkpoint"
        if "Unknown model" in text:
            timm = export_versions()["timm"]
            hint = f"the checkpoint names an architecture this timm ({timm}) does not know; {hint}"
        raise ModelError(
            f"cannot load the checkpoint in {member_dir}: {text}", hint=hint, path=member_dir
        ) from e


def _member_metadata(info: Any, name: str) -> ModelMetadata:
    """The metadata every exported member carries, from a checkpoint's ``info``."""
    extra = dict(getattr(info, "extra", {}) or {})
    return ModelMetadata(
        classes=tuple(info.classes),
        preprocess=info.preprocess,
        input_format="float_normalized",
        card={
            "kind": "member",
            "name": name,
            "member": name,
            "timm_name": info.timm_name,
            "backbone": getattr(info, "backbone", "") or name,
            "checkpoint_sha256": info.sha256,
            "checkpoint_epoch": info.epoch,
            "val_metrics": dict(info.metrics),
            "train_versions": dict(info.versions),
            "manifest_digest": extra.get("manifest_digest"),
            "pretrained": extra.get("pretrained"),
            "dataset": extra.get("dataset"),
        },
    )


def export_run(cfg: RunExportConfig) -> RunExportResult:
    """Export, verify and make variants for the selected members; write the report."""
    check_opset(cfg.opset)
    member_dirs = _select_members(cfg.run_dir, cfg.models)
    onnx_dir = Path(cfg.run_dir) / ONNX_DIR
    onnx_dir.mkdir(parents=True, exist_ok=True)
    pool = InputPool(cfg)
    reports = [_export_member(d, cfg, pool, onnx_dir) for d in member_dirs]
    return _finish("export", reports, cfg, pool, onnx_dir)


def verify_run(cfg: RunExportConfig) -> RunExportResult:
    """Re-verify the existing files in RUN_DIR/onnx against their checkpoints (and variants against FP32)."""
    member_dirs = _select_members(cfg.run_dir, cfg.models)
    onnx_dir = Path(cfg.run_dir) / ONNX_DIR
    exported = [d for d in member_dirs if (onnx_dir / f"{d.name}.onnx").is_file()]
    if not exported:
        raise ModelError(
            f"no exported member in {onnx_dir} (looked for {', '.join(d.name + '.onnx' for d in member_dirs)})",
            hint=f"export them first: `cxr export {cfg.run_dir}`",
            path=onnx_dir,
        )
    pool = InputPool(cfg)
    reports = []
    for d in member_dirs:
        if d in exported:
            reports.append(_verify_member(d, cfg, pool, onnx_dir))
        elif cfg.models is not None:  # asked for explicitly, so its absence is a failure
            reports.append(
                MemberReport(d.name, "?", None, error=f"{onnx_dir / (d.name + '.onnx')} does not exist")
            )
    return _finish("verify", reports, cfg, pool, onnx_dir)


def _export_member(member_dir: Path, cfg: RunExportConfig, pool: InputPool, onnx_dir: Path) -> MemberReport:
    ck = _load_member(member_dir, cfg.which)
    info = ck.info
    name = member_dir.name
    out = onnx_dir / f"{name}.onnx"
    metadata = _member_metadata(info, name)
    log.info("exporting %s (%s)", name, info.timm_name)
    try:
        result = export_onnx(
            ck.model,
            ExportConfig(
                out=out,
                metadata=metadata,
                input_size=tuple(info.preprocess.input_size),  # type: ignore[arg-type]
                opset=cfg.opset,
                exporter=cfg.exporter,
                simplify=cfg.simplify,
                external_data_threshold=cfg.external_data_threshold,
                check_atol=cfg.atol,
                timm_name=info.timm_name,
                seed=cfg.seed,
                threads=cfg.threads,
            ),
        )
    except VerificationError as e:
        _reject(out)
        return MemberReport(name, info.timm_name, None, error=e.message)
    inputs, sources = pool.verify_inputs(info.preprocess)
    parity = verify_onnx(ck.model, out, inputs, _fp32_verify_cfg(name, cfg), sources=sources)
    if not parity.passed:
        _reject(out)
        error = f"onnx fp32 differs from pytorch: {'; '.join(parity.reasons)}"
        return MemberReport(name, info.timm_name, None, result, parity, error=error)
    notes = list(_remove_stale_variants(out, result.sha256, keep=cfg.variants))
    variants = tuple(_make_variant(out, v, cfg, pool, info.preprocess) for v in cfg.variants)
    return MemberReport(name, info.timm_name, out, result, parity, variants, notes=tuple(notes))


def _verify_member(member_dir: Path, cfg: RunExportConfig, pool: InputPool, onnx_dir: Path) -> MemberReport:
    name = member_dir.name
    path = onnx_dir / f"{name}.onnx"
    ck = _load_member(member_dir, cfg.which)
    meta = read_metadata(path)
    recorded = meta.card.get("checkpoint_sha256")
    if recorded != ck.info.sha256:
        stale = (
            f"{path.name} was exported from checkpoint {str(recorded)[:12]}..., but {member_dir} now "
            f"holds {ck.info.sha256[:12]}...: re-run `cxr export {cfg.run_dir} --members {name}`"
        )
        return MemberReport(name, ck.info.timm_name, path, error=stale)
    inputs, sources = pool.verify_inputs(ck.info.preprocess)
    parity = verify_onnx(ck.model, path, inputs, _fp32_verify_cfg(name, cfg), sources=sources)
    error = None if parity.passed else f"onnx fp32 differs from pytorch: {'; '.join(parity.reasons)}"
    fp32_sha = onnx_sha256(path)
    variants = []
    for precision in VARIANTS:
        vpath = variant_path(path, precision)
        if vpath.is_file():
            variants.append(_verify_variant(path, vpath, precision, fp32_sha, cfg, pool, ck.info.preprocess))
    bad = [v for v in variants if not v.usable]
    if bad and error is None:
        error = "; ".join(f"{v.precision}: {v.reason}" for v in bad)
    return MemberReport(
        name, ck.info.timm_name, path, None, parity, tuple(variants), error, card=dict(meta.card)
    )


def _fp32_verify_cfg(name: str, cfg: RunExportConfig) -> VerifyConfig:
    return VerifyConfig(name=name, atol=cfg.atol, min_top1=1.0, strict=False, threads=cfg.threads)


def _make_variant(
    src: Path, precision: str, cfg: RunExportConfig, pool: InputPool, spec: PreprocessSpec
) -> VariantResult:
    inputs, sources = pool.variant_inputs(spec)
    common: dict[str, Any] = dict(
        verify_inputs=inputs,
        min_agreement=cfg.min_agreement,
        threads=cfg.threads,
        external_data_threshold=cfg.external_data_threshold,
        sources=sources,
    )
    if precision == "fp16":
        return make_fp16(src, Fp16Config(**common))
    calib, calib_source = pool.calibration_inputs(spec)
    int8 = Int8Config(
        calibration=calib,
        calibration_source=calib_source,
        fast_bias_correction=cfg.int8_fast_bias_correction,
        max_probability_change=cfg.int8_max_probability_change,
        accuracy_control=cfg.int8_accuracy_control,
        **common,
    )
    return make_int8(src, int8)


def _verify_variant(
    src: Path,
    vpath: Path,
    precision: str,
    fp32_sha: str,
    cfg: RunExportConfig,
    pool: InputPool,
    spec: PreprocessSpec,
) -> VariantResult:
    t0 = time.perf_counter()
    recorded = read_metadata(vpath).card.get("fp32_sha256")
    if recorded != fp32_sha:
        reason = f"{vpath.name} was made from another {src.name} (stale): re-run `cxr export --variants {precision}`"
        return VariantResult(precision, vpath, False, reason, 0.0, vpath.stat().st_size, fp32_sha, None)
    inputs, sources = pool.variant_inputs(spec)
    vcfg = variant_verify_config(src.stem, precision, cfg.min_agreement, cfg.threads)
    report = verify_against_onnx(src, vpath, inputs, vcfg, candidate=f"onnx {precision}", sources=sources)
    why = None if report.passed else f"not usable: {'; '.join(report.reasons)}"
    seconds, size = time.perf_counter() - t0, vpath.stat().st_size
    return VariantResult(precision, vpath, report.passed, why, seconds, size, fp32_sha, report)


def _reject(out: Path) -> None:
    """Rename a graph that failed verification so that nothing downstream picks it up."""
    if out.exists():
        out.replace(out.with_name(out.name + REJECTED_SUFFIX))
        log.error("%s failed verification; renamed to %s%s", out, out.name, REJECTED_SUFFIX)


def _remove_stale_variants(out: Path, fp32_sha: str, keep: Sequence[str]) -> list[str]:
    """Variants beside ``out`` made from an older FP32 file are removed (those in ``keep`` are rebuilt)."""
    notes = []
    for precision in VARIANTS:
        vpath = variant_path(out, precision)
        if not vpath.is_file() or precision in keep:
            continue
        try:
            recorded = read_metadata(vpath).card.get("fp32_sha256")
        except ModelError:
            recorded = None
        if recorded != fp32_sha:
            vpath.unlink()
            external_data_path(vpath).unlink(missing_ok=True)
            notes.append(f"removed stale {vpath.name} (made from an earlier {out.name})")
    return notes


def _finish(
    kind: str, reports: list[MemberReport], cfg: RunExportConfig, pool: InputPool, onnx_dir: Path
) -> RunExportResult:
    onnx_dir.mkdir(parents=True, exist_ok=True)
    stem = "export_report" if kind == "export" else "verify_report"
    result = RunExportResult(
        kind, tuple(reports), onnx_dir / f"{stem}.json", onnx_dir / f"{stem}.md", pool.describe()
    )
    write_run_report(result, cfg)
    if cfg.strict:
        raise_for_failures(result)
    return result


def raise_for_failures(result: RunExportResult) -> None:
    """``VerificationError`` (exit code 1) naming every member that failed, if any did."""
    if result.failed:
        details = "; ".join(f"{m.name}: {m.error}" for m in result.members if not m.passed)
        raise VerificationError(
            f"{result.kind} failed for {', '.join(result.failed)}: {details}",
            hint=f"see {result.report_md}; never deploy a graph that failed verification",
        )
