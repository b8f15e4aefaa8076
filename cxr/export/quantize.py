"""Edge variants of an exported FP32 member: FP16 for GPUs, static INT8 (QDQ) for CPUs.

Takes: ``<name>.onnx`` written by ``export_onnx`` (with cxr metadata) and an ``Fp16Config`` or
``Int8Config`` (verification inputs, and for INT8 calibration inputs, all float32 [N, C, H, W] preprocessed
exactly as the runtime does). Makes: ``<name>.fp16.onnx`` / ``<name>.int8.onnx`` beside it and a
``VariantResult``.

- FP16: onnxruntime's float16 converter, inputs and outputs kept FP32, numerically sensitive ops kept FP32
  (``FP16_KEEP_FP32_OPS``: ConvNeXt's LayerNormalization overflows in FP16, and reductions/powers).
- INT8: ``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel INT8 weights, UINT8
  activations (U8S8, the fast path on x86 with VNNI), MinMax calibration on the given images. Dynamic
  quantization is not offered: it was 1.7-6x slower than FP32 for these CNNs and is known to hurt accuracy.

Each variant is compared with the FP32 file on onnxruntime (CPU) over the verification inputs: top-1
agreement and max probability drift. Below ``min_agreement`` (default 99%) the variant is not written (a
stale file of that name is removed) and the reason is returned. A variant's metadata is the FP32 one plus
card keys ``precision``, ``fp32_sha256``, ``top1_agreement_vs_fp32``, ``max_prob_drift_vs_fp32``,
``agreement_n`` and ``variant_settings``.
FP16 verified on the CPU is honest but not the whole story: onnxruntime's CPU provider runs FP16 ops that
lack a CPU kernel in FP32 (it inserts casts), so GPU numerics can drift a little more; ``verified_on`` says
where it was measured. Re-run ``cxr verify`` on a GPU machine to measure there.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from cxr.errors import ConfigError, CxrError, ModelError, first_line
from cxr.export.export_types import DEFAULT_EXTERNAL_DATA_THRESHOLD
from cxr.export.metadata import read_metadata, set_metadata
from cxr.export.onnx_files import (
    external_data_path,
    move_into_place,
    onnx_sha256,
    onnx_size_bytes,
    save_onnx,
)
from cxr.export.ort_tools import CalibrationReader, quiet_onnxruntime
from cxr.export.verify import VerifyConfig, VerifyReport, verify_against_onnx
from cxr.spec import ModelMetadata

log = logging.getLogger(__name__)

Precision = Literal["fp16", "int8"]
VARIANTS: tuple[str, ...] = ("fp16", "int8")
DEFAULT_MIN_AGREEMENT = 0.99
FP16_KEEP_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Softmax",
)
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Fp16Config:
    verify_inputs: np.ndarray = field(repr=False, compare=False)
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS
    out: Path | None = None  # default: <name>.fp16.onnx beside the source
    threads: int | None = None
    batch_size: int = 8
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    sources: dict[str, int] | None = field(default=None, compare=False)  # where verify_inputs came from

    def __post_init__(self) -> None:
        _check_common(self.verify_inputs, self.min_agreement, "verify_inputs")


@dataclass(frozen=True)
class Int8Config:
    calibration: np.ndarray = field(repr=False, compare=False)
    verify_inputs: np.ndarray = field(repr=False, compare=False)
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    reduce_range: bool = False  # True on CPUs without VNNI, where U8S8 can saturate
    calibration_batch: int = 8
    exclude_op_types: tuple[str, ...] = ("LayerNormalization",)  # sensitive: stays FP32
    out: Path | None = None  # default: <name>.int8.onnx beside the source
    threads: int | None = None
    batch_size: int = 8
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    sources: dict[str, int] | None = field(default=None, compare=False)
    calibration_source: str = "given"  # for the report: "train", "synthetic"...

    def __post_init__(self) -> None:
        _check_common(self.verify_inputs, self.min_agreement, "verify_inputs")
        _check_inputs(self.calibration, "calibration")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibrate_method!r}",
                hint=f"use one of {', '.join(CALIBRATION_METHODS)}",
            )


@dataclass(frozen=True)
class VariantResult:
    precision: str
    path: Path | None  # None when the variant was rejected (nothing written)
    usable: bool
    reason: str | None  # why it is not usable
    seconds: float
    size_bytes: int
    fp32_sha256: str
    report: VerifyReport | None
    verified_on: str = "onnxruntime CPUExecutionProvider"
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = None if self.path is None else str(self.path)
        d["report"] = None if self.report is None else self.report.to_dict()
        return d


def variant_path(src: Path, precision: str) -> Path:
    """``<name>.onnx`` -> ``<name>.<precision>.onnx`` in the same folder."""
    return Path(src).with_name(f"{Path(src).stem}.{precision}.onnx")


def make_fp16(src: Path, cfg: Fp16Config) -> VariantResult:
    """Convert ``src`` to FP16 (FP32 I/O, sensitive ops FP32), verify against it, write if it agrees."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src = Path(src)
    meta = _fp32_metadata(src)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.keep_fp32_ops))
    settings = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "fp32_ops": block}

    def build(tmp: Path) -> onnx.ModelProto:
        return convert_float_to_float16(str(src), keep_io_types=True, op_block_list=block)

    return _make_variant(src, "fp16", meta, build, cfg.verify_inputs, cfg, settings)


def make_int8(src: Path, cfg: Int8Config) -> VariantResult:
    """Static QDQ INT8 of ``src`` calibrated on ``cfg.calibration``; verify against it, write if it agrees."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = Path(src)
    meta = _fp32_metadata(src)
    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    settings = {
        "format": "QDQ",
        "per_channel": cfg.per_channel,
        "activation_type": cfg.activation_type,
        "weight_type": cfg.weight_type,
        "calibrate_method": cfg.calibrate_method,
        "reduce_range": cfg.reduce_range,
        "calibration_images": int(len(cfg.calibration)),
        "calibration_source": cfg.calibration_source,
        "pre_process": "onnxruntime.quantization.quant_pre_process",
    }
    large = _external(src)

    def build(tmp: Path) -> onnx.ModelProto:
        pre, quant = tmp / "pre.onnx", tmp / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True)
        except Exception as e:  # the optimizer or symbolic shape inference can fail on exotic graphs
            log.warning("quant_pre_process failed on %s (%s); quantizing without it", src, e)
            settings["pre_process"] = f"skipped: quant_pre_process failed ({first_line(e)})"
            pre = src
        exclude = None
        if cfg.exclude_op_types:
            model = onnx.load(str(pre), load_external_data=False)
            exclude = [n.name for n in model.graph.node if n.op_type in cfg.exclude_op_types]
        quantize_static(
            str(pre),
            str(quant),
            CalibrationReader(cfg.calibration, cfg.calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=qtypes[cfg.activation_type],
            weight_type=qtypes[cfg.weight_type],
            calibrate_method=methods[cfg.calibrate_method],
            nodes_to_exclude=exclude,
            use_external_data_format=large,
        )
        return onnx.load(str(quant))

    return _make_variant(src, "int8", meta, build, cfg.verify_inputs, cfg, settings)


def _make_variant(
    src: Path,
    precision: str,
    meta: ModelMetadata,
    build: Any,
    verify_inputs: np.ndarray,
    cfg: Fp16Config | Int8Config,
    settings: dict[str, Any],
) -> VariantResult:
    """Build the variant in a scratch folder, verify it against ``src``, and move it into place if it agrees."""
    t0 = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else variant_path(src, precision)
    fp32_sha = onnx_sha256(src)
    vcfg = _variant_verify_config(meta, src, precision, cfg)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            with quiet_onnxruntime():
                proto = build(tmp)
        except CxrError:
            raise
        except Exception as e:  # converters and quantizers raise assorted errors on unsupported graphs
            return _rejected(
                out, precision, f"{precision} conversion failed: {first_line(e)}", t0, fp32_sha, settings
            )
        staged = tmp / "staged" / out.name
        save_onnx(proto, staged, cfg.external_data_threshold)
        try:
            report = verify_against_onnx(
                src, staged, verify_inputs, vcfg, candidate=f"onnx {precision}", sources=cfg.sources
            )
        except ModelError as e:
            return _rejected(
                out,
                precision,
                f"onnxruntime cannot run the {precision} graph: {e.message}",
                t0,
                fp32_sha,
                settings,
            )
        if not report.passed:
            reason = f"not usable: {'; '.join(report.reasons)}"
            return _rejected(out, precision, reason, t0, fp32_sha, settings, report)
        _write_variant_metadata(staged, meta, precision, fp32_sha, report, settings, cfg)
        move_into_place(staged, out)
    result = VariantResult(
        precision=precision,
        path=out,
        usable=True,
        reason=None,
        seconds=time.perf_counter() - t0,
        size_bytes=onnx_size_bytes(out),
        fp32_sha256=fp32_sha,
        report=report,
        settings=settings,
    )
    log.info("%s: %s", out, report.summary())
    return result


def _variant_verify_config(
    meta: ModelMetadata, src: Path, precision: str, cfg: Fp16Config | Int8Config
) -> VerifyConfig:
    """Top-1 agreement with the FP32 file is the bar; no absolute tolerance, ties not excused."""
    name = str(meta.card.get("member") or src.stem)
    return VerifyConfig(
        name=f"{name} {precision}",
        atol=None,
        min_top1=cfg.min_agreement,
        tie_margin=0.0,
        strict=False,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
    )


def _write_variant_metadata(
    staged: Path,
    meta: ModelMetadata,
    precision: str,
    fp32_sha: str,
    report: VerifyReport,
    settings: dict[str, Any],
    cfg: Fp16Config | Int8Config,
) -> None:
    """Rewrite ``staged`` with the FP32 metadata plus the variant's card keys (precision, agreement...)."""
    proto = onnx.load(str(staged))
    card = {
        **dict(meta.card),
        "precision": precision,
        "fp32_sha256": fp32_sha,
        "top1_agreement_vs_fp32": report.top1_agreement,
        "max_prob_drift_vs_fp32": report.max_abs,
        "agreement_n": report.n,
        "variant_settings": settings,
    }
    set_metadata(proto, replace(meta, card=card))
    save_onnx(proto, staged, cfg.external_data_threshold)


def _rejected(
    out: Path,
    precision: str,
    reason: str,
    t0: float,
    fp32_sha: str,
    settings: dict[str, Any],
    report: VerifyReport | None = None,
) -> VariantResult:
    for stale in (out, external_data_path(out)):
        if stale.exists():
            stale.unlink()
    log.warning("%s variant %s rejected: %s", precision, out.name, reason)
    return VariantResult(
        precision, None, False, reason, time.perf_counter() - t0, 0, fp32_sha, report, settings=settings
    )


def _fp32_metadata(src: Path) -> ModelMetadata:
    if not src.is_file():
        raise ModelError(
            f"{src} does not exist", hint="export the FP32 model first: `cxr export RUN_DIR`", path=src
        )
    meta = read_metadata(src)
    precision = meta.card.get("precision", "fp32")
    if precision != "fp32":
        raise ModelError(
            f"{src} is already a {precision} variant",
            hint="make variants from the FP32 <name>.onnx",
            path=src,
        )
    return meta


def _external(src: Path) -> bool:
    return external_data_path(src).exists()


def _check_common(inputs: np.ndarray, min_agreement: float, what: str) -> None:
    _check_inputs(inputs, what)
    if not 0.0 < min_agreement <= 1.0:
        raise ConfigError(f"min_agreement {min_agreement} must be in (0, 1]", hint="for example 0.99")


def _check_inputs(inputs: np.ndarray, what: str) -> None:
    arr = np.asarray(inputs)
    if arr.ndim != 4 or len(arr) == 0 or arr.dtype != np.float32:
        raise ConfigError(
            f"{what} must be a non-empty float32 array [N, C, H, W], got {arr.dtype} {arr.shape}",
            hint="preprocess images with cxr.imaging.preprocess.to_model_input(..., normalized=True)",
        )
