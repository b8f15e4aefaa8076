"""`cxr export RUN_DIR` and `cxr verify RUN_DIR`: export, verify and derive variants for every trained member.

Takes: a run directory with ``members/<name>/`` checkpoints (``cxr.train.checkpoint``) and, when present,
the split manifest (``RUN_DIR/manifest.csv`` or the one named in the member's training config), and a
``RunExportConfig``. Makes, in ``RUN_DIR/onnx/``: ``<name>.onnx`` (+ ``<name>.fp16.onnx`` /
``<name>.int8.onnx``), ``export_report.json`` and ``export_report.md`` (``verify_report.*`` for a
verification run), and returns ``RunExportResult``.

Verification inputs: up to ``max_val_images`` val-split images (stratified by class), decoded and
preprocessed exactly as the runtime does (``decode_gray`` + ``to_model_input(normalized=True)``), else
``n_synthetic`` synthetic radiographs, plus ``n_random`` noise images. INT8 calibration: up to
``max_calib_images`` train-split images (synthetic ones when there is no manifest; the report says so).
A member whose FP32 graph fails verification is renamed ``<name>.onnx.rejected`` and, with ``strict``, the
run ends with ``VerificationError`` (exit code 1) naming it, after the report is written.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ConfigError, CxrError, DataError, DecodeError, ModelError, VerificationError
from cxr.export.onnx_export import (
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DEFAULT_OPSET,
    ExportConfig,
    Exporter,
    ExportResult,
    check_opset,
    export_onnx,
    external_data_path,
    onnx_sha256,
    read_metadata,
)
from cxr.export.quantize import (
    DEFAULT_MIN_AGREEMENT,
    VARIANTS,
    Fp16Config,
    Int8Config,
    VariantResult,
    make_fp16,
    make_int8,
    variant_path,
)
from cxr.export.verify import FP32_ATOL, VerifyConfig, VerifyReport, verify_against_onnx, verify_onnx
from cxr.spec import ModelMetadata, PreprocessSpec

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MEMBERS_DIR = "members"
REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class RunExportConfig:
    run_dir: Path
    models: tuple[str, ...] | None = None  # None: every member under RUN_DIR/members
    variants: tuple[str, ...] = ()  # any of VARIANTS
    simplify: bool = True
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    which: str = "best"  # which checkpoint of each member
    manifest: Path | None = None  # default: RUN_DIR/manifest.csv, else the training config's manifest
    max_val_images: int = 64
    n_random: int = 8
    n_synthetic: int = 16
    max_calib_images: int = 64
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    atol: float = FP32_ATOL
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    threads: int | None = None
    seed: int = 0
    strict: bool = True  # raise VerificationError at the end when a member failed

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(
                f"unknown variant(s) {', '.join(bad)}", hint=f"use any of {', '.join(VARIANTS)}"
            )
        for name in ("max_val_images", "n_random", "n_synthetic", "max_calib_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_val_images + self.n_synthetic + self.n_random == 0:
            raise ConfigError("no verification inputs: raise --max-val or the random/synthetic counts")


@dataclass(frozen=True)
class MemberReport:
    name: str
    timm_name: str
    path: Path | None  # the FP32 file, None when it was not written or was rejected
    export: ExportResult | None = None
    parity: VerifyReport | None = None
    variants: tuple[VariantResult, ...] = ()
    error: str | None = None  # why the FP32 model failed (None: it passed)
    notes: tuple[str, ...] = ()
    card: Mapping[str, Any] = field(default_factory=dict)  # the FP32 file's metadata card (verify runs)

    @property
    def passed(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timm_name": self.timm_name,
            "path": None if self.path is None else str(self.path),
            "passed": self.passed,
            "error": self.error,
            "export": None if self.export is None else self.export.to_dict(),
            "parity": None if self.parity is None else self.parity.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "notes": list(self.notes),
            **({"card": dict(self.card)} if self.card else {}),
        }


@dataclass(frozen=True)
class RunExportResult:
    kind: str  # "export" or "verify"
    members: tuple[MemberReport, ...]
    report_json: Path
    report_md: Path
    inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if not m.passed)


@dataclass(frozen=True)
class ImageSet:
    """Decoded uint8 grayscale images and where they came from."""

    grays: tuple[np.ndarray, ...]
    source: str  # "val", "train" or "synthetic"
    note: str | None = None

    def inputs(self, spec: PreprocessSpec) -> np.ndarray:
        from cxr.imaging.preprocess import to_model_input

        if not self.grays:
            return np.zeros((0, spec.channels, *spec.input_size), dtype=np.float32)
        return to_model_input(list(self.grays), spec, normalized=True).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def export_run(cfg: RunExportConfig) -> RunExportResult:
    """Export, verify and make variants for the selected members; write the report (see the docstring)."""
    check_opset(cfg.opset)
    member_dirs = select_members(cfg.run_dir, cfg.models)
    onnx_dir = Path(cfg.run_dir) / ONNX_DIR
    onnx_dir.mkdir(parents=True, exist_ok=True)
    pool = _InputPool(cfg)
    reports = [_export_member(d, cfg, pool, onnx_dir) for d in member_dirs]
    return _finish("export", reports, cfg, pool, onnx_dir)


def verify_run(cfg: RunExportConfig) -> RunExportResult:
    """Re-verify the existing files in RUN_DIR/onnx against their checkpoints (and variants against FP32)."""
    member_dirs = select_members(cfg.run_dir, cfg.models)
    onnx_dir = Path(cfg.run_dir) / ONNX_DIR
    exported = [d for d in member_dirs if (onnx_dir / f"{d.name}.onnx").is_file()]
    if not exported:
        raise ModelError(
            f"no exported member in {onnx_dir} (looked for {', '.join(d.name + '.onnx' for d in member_dirs)})",
            hint=f"export them first: `cxr export {cfg.run_dir}`",
            path=onnx_dir,
        )
    pool = _InputPool(cfg)
    reports = []
    for d in member_dirs:
        if d in exported:
            reports.append(_verify_member(d, cfg, pool, onnx_dir))
        elif cfg.models is not None:  # asked for explicitly, so its absence is a failure
            reports.append(
                MemberReport(d.name, "?", None, error=f"{onnx_dir / (d.name + '.onnx')} does not exist")
            )
    return _finish("verify", reports, cfg, pool, onnx_dir)


def select_members(run_dir: Path, models: Sequence[str] | None) -> list[Path]:
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


def load_member(member_dir: Path, which: str = "best") -> Any:
    """``cxr.train.checkpoint.load_checkpoint`` with errors that say what to do."""
    try:
        from cxr.train.checkpoint import load_checkpoint
    except ImportError as e:
        raise ModelError(
            f"cannot load checkpoints: {e}",
            hint="install the training extra: pip install 'cxr-toolkit[train]'",
        ) from e
    try:
        return load_checkpoint(member_dir, which)
    except CxrError:
        raise
    except Exception as e:  # timm/torch/safetensors errors on a foreign or damaged checkpoint
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "re-train the member with this cxr, or install the cxr version that wrote the checkpoint"
        if "Unknown model" in text:
            hint = f"the checkpoint names an architecture this timm ({_timm_version()}) does not know; {hint}"
        raise ModelError(
            f"cannot load the checkpoint in {member_dir}: {text}", hint=hint, path=member_dir
        ) from e


# ---------------------------------------------------------------------------------------------------------
# One member
# ---------------------------------------------------------------------------------------------------------


def _export_member(member_dir: Path, cfg: RunExportConfig, pool: _InputPool, onnx_dir: Path) -> MemberReport:
    ck = load_member(member_dir, cfg.which)
    info = ck.info
    name = member_dir.name
    out = onnx_dir / f"{name}.onnx"
    metadata = member_metadata(info, name)
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
    parity = verify_onnx(
        ck.model, out, inputs, _fp32_verify_cfg(name, cfg), sources=sources
    )  # strict=False: judged below
    if not parity.passed:
        _reject(out)
        error = f"onnx fp32 differs from pytorch: {'; '.join(parity.reasons)}"
        return MemberReport(name, info.timm_name, None, result, parity, error=error)
    notes = list(_remove_stale_variants(out, result.sha256, keep=cfg.variants))
    variants = tuple(_make_variant(out, v, cfg, pool, info.preprocess) for v in cfg.variants)
    return MemberReport(name, info.timm_name, out, result, parity, variants, notes=tuple(notes))


def _verify_member(member_dir: Path, cfg: RunExportConfig, pool: _InputPool, onnx_dir: Path) -> MemberReport:
    name = member_dir.name
    path = onnx_dir / f"{name}.onnx"
    ck = load_member(member_dir, cfg.which)
    meta = read_metadata(path)
    recorded = meta.card.get("checkpoint_sha256")
    if recorded != ck.info.sha256:
        return MemberReport(
            name,
            ck.info.timm_name,
            path,
            error=f"{path.name} was exported from checkpoint {str(recorded)[:12]}..., but {member_dir} now "
            f"holds {ck.info.sha256[:12]}...: re-run `cxr export {cfg.run_dir} --models {name}`",
        )
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


def member_metadata(info: Any, name: str) -> ModelMetadata:
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


def _fp32_verify_cfg(name: str, cfg: RunExportConfig) -> VerifyConfig:
    return VerifyConfig(name=name, atol=cfg.atol, min_top1=1.0, strict=False, threads=cfg.threads)


def _make_variant(
    src: Path, precision: str, cfg: RunExportConfig, pool: _InputPool, spec: PreprocessSpec
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
    return make_int8(src, Int8Config(calibration=calib, calibration_source=calib_source, **common))


def _verify_variant(
    src: Path,
    vpath: Path,
    precision: str,
    fp32_sha: str,
    cfg: RunExportConfig,
    pool: _InputPool,
    spec: PreprocessSpec,
) -> VariantResult:
    t0 = time.perf_counter()
    recorded = read_metadata(vpath).card.get("fp32_sha256")
    if recorded != fp32_sha:
        reason = f"{vpath.name} was made from another {src.name} (stale): re-run `cxr export --variants {precision}`"
        return VariantResult(precision, vpath, False, reason, 0.0, vpath.stat().st_size, fp32_sha, None)
    inputs, sources = pool.variant_inputs(spec)
    vcfg = VerifyConfig(
        name=f"{src.stem} {precision}",
        atol=None,
        min_top1=cfg.min_agreement,
        tie_margin=0.0,
        strict=False,
        threads=cfg.threads,
    )
    report = verify_against_onnx(src, vpath, inputs, vcfg, candidate=f"onnx {precision}", sources=sources)
    why = None if report.passed else f"not usable: {'; '.join(report.reasons)}"
    return VariantResult(
        precision,
        vpath,
        report.passed,
        why,
        time.perf_counter() - t0,
        vpath.stat().st_size,
        fp32_sha,
        report,
    )


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
    kind: str, reports: list[MemberReport], cfg: RunExportConfig, pool: _InputPool, onnx_dir: Path
) -> RunExportResult:
    from cxr.export.report import write_run_report

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


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


class _InputPool:
    """Loads the verification and calibration images once; preprocesses them per PreprocessSpec."""

    def __init__(self, cfg: RunExportConfig) -> None:
        self._cfg = cfg
        self._manifest_note: str | None = None
        self._manifest: Any = _open_manifest(cfg, self)
        self._val: ImageSet | None = None
        self._train: ImageSet | None = None
        self._cache: dict[tuple[str, PreprocessSpec], np.ndarray] = {}

    def note(self, text: str) -> None:
        self._manifest_note = text
        log.warning("%s", text)

    def _val_set(self) -> ImageSet:
        if self._val is None:
            cfg = self._cfg
            found = _split_images(self._manifest, "val", cfg.max_val_images, cfg.seed)
            self._val = found or synthetic_images(cfg.n_synthetic, cfg.seed, self._manifest_note)
        return self._val

    def _train_set(self) -> ImageSet:
        if self._train is None:
            cfg = self._cfg
            found = _split_images(self._manifest, "train", cfg.max_calib_images, cfg.seed)
            self._train = found or synthetic_images(
                max(cfg.max_calib_images, 1), cfg.seed + 7919, self._manifest_note
            )
        return self._train

    def _pre(self, key: str, images: ImageSet, spec: PreprocessSpec) -> np.ndarray:
        if (key, spec) not in self._cache:
            self._cache[(key, spec)] = images.inputs(spec)
        return self._cache[(key, spec)]

    def verify_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, dict[str, int]]:
        """Val (or synthetic) images plus noise images, for FP32 parity with PyTorch."""
        images = self._val_set()
        real = self._pre("val", images, spec)
        rng = np.random.default_rng(self._cfg.seed + 1)
        noise = random_inputs(spec, self._cfg.n_random, rng)
        return np.concatenate([real, noise]), {images.source: len(real), "random": len(noise)}

    def variant_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, dict[str, int]]:
        """Val (or synthetic) images only: agreement of a variant is measured on images, not noise."""
        images = self._val_set()
        return self._pre("val", images, spec), {images.source: len(images.grays)}

    def calibration_inputs(self, spec: PreprocessSpec) -> tuple[np.ndarray, str]:
        images = self._train_set()
        return self._pre("train", images, spec), images.source

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manifest": None if self._manifest is None else str(self._manifest.path)}
        for key, images in (("verify", self._val), ("calibration", self._train)):
            if images is not None:
                out[key] = {"source": images.source, "images": len(images.grays), "note": images.note}
        if self._manifest_note:
            out["note"] = self._manifest_note
        out["random"] = self._cfg.n_random
        return out


def _open_manifest(cfg: RunExportConfig, pool: _InputPool) -> Any:
    from cxr.data.manifest import load_manifest

    candidates = [Path(cfg.manifest)] if cfg.manifest is not None else _manifest_candidates(cfg)
    for path in candidates:
        if path.is_file():
            try:
                return load_manifest(path)
            except DataError as e:
                if cfg.manifest is not None:
                    raise
                pool.note(f"manifest {path} is unusable ({e.message}); verifying on synthetic images instead")
                return None
    if cfg.manifest is not None:
        raise DataError(f"manifest {cfg.manifest} does not exist", hint="pass the manifest.csv of the run")
    pool.note(f"no manifest.csv in {cfg.run_dir}; verifying and calibrating on synthetic images")
    return None


def _manifest_candidates(cfg: RunExportConfig) -> list[Path]:
    """RUN_DIR/manifest.csv, then the manifest named in any member's training config."""
    out = [Path(cfg.run_dir) / "manifest.csv"]
    for meta in sorted((Path(cfg.run_dir) / MEMBERS_DIR).glob(f"*/{cfg.which}.json")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8")).get("config", {}).get("data", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, dict) and data.get("manifest"):
            out.append(Path(str(data["manifest"])))
    return out


def _split_images(manifest: Any, split: str, cap: int, seed: int) -> ImageSet | None:
    """Up to ``cap`` decoded images of ``split``, round-robin over classes (seeded); None if there are none."""
    from cxr.imaging.decode import decode_gray

    if manifest is None or cap == 0:
        return None
    rows = manifest.split(split)
    if not rows:
        return None
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Any]] = {}
    for r in rows:
        by_class.setdefault(r.label, []).append(r)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
    order = [q[i] for i in range(max(len(q) for q in queues)) for q in queues if i < len(q)]
    grays: list[np.ndarray] = []
    skipped = 0
    for row in order:
        if len(grays) >= cap:
            break
        try:
            grays.append(decode_gray(manifest.abspath(row)))
        except DecodeError as e:
            skipped += 1
            log.warning("skipping %s", e.message)
    if not grays:
        return None
    note = f"{skipped} unreadable image(s) skipped" if skipped else None
    return ImageSet(tuple(grays), split, note)


def synthetic_images(n: int, seed: int, note: str | None = None, size: int = 256) -> ImageSet:
    """``n`` synthetic radiographs (classes in turn) from ``cxr.data.synth``, seeded."""
    from cxr.data.synth import render_xray
    from cxr.labels import CLASSES

    rng = np.random.default_rng(seed)
    grays = tuple(render_xray(CLASSES[i % len(CLASSES)], rng, size=size) for i in range(n))
    return ImageSet(grays, "synthetic", note)


def random_inputs(spec: PreprocessSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform-noise grayscale images, normalised like real ones (the range the runtime can feed)."""
    from cxr.imaging.preprocess import normalize

    h, w = spec.input_size
    if n == 0:
        return np.zeros((0, spec.channels, h, w), dtype=np.float32)
    noise = rng.integers(0, 256, size=(n, 1, h, w), dtype=np.uint8)
    return normalize(noise, spec).astype(np.float32)


def _timm_version() -> str:
    try:
        import timm

        return str(timm.__version__)
    except ImportError:
        return "not installed"
