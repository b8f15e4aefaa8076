"""Edge variants of an exported FP32 member: FP16 for GPUs, static INT8 (QDQ) for CPUs.

Takes: ``<name>.onnx`` written by ``export_onnx`` and an ``Fp16Config`` or ``Int8Config`` (float32
[N, C, H, W] inputs preprocessed as the runtime does). Makes: ``<name>.fp16.onnx`` / ``<name>.int8.onnx``
and a ``VariantResult``. FP16: onnxruntime's converter, FP32 I/O, ``FP16_KEEP_FP32_OPS`` kept FP32 (ConvNeXt's
LayerNorm overflows in FP16). INT8: NNCF post-training quantization (QDQ, per-channel weights, full
bias correction, the mixed preset where LayerNorm/GELU are) calibrated on real train images, then NNCF's
accuracy control, which keeps in float the layers that move the member's class probabilities most away from
the FP32 member's on the val images, until their mean change is at most ``max_probability_change`` (their
names go into the card's ``variant_settings``); depthwise convolutions stay FP32 by default (a small share of the work, sensitive
to per-channel INT8, and onnxruntime's QLinearConv cannot run NNCF's quantized ones in Xception); no dynamic
quantization (it hurts these CNNs' accuracy).
A variant whose top-1 agreement with the FP32 file (onnxruntime CPU) is below ``min_agreement`` is not
written; a written one carries the FP32 metadata plus its precision, ``fp32_sha256`` and agreement. FP16
verified on the CPU runs some ops in FP32; ``verified_on`` says where, ``cxr verify`` on a GPU re-measures.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from cxr.errors import ConfigError, CxrError, ModelError, first_line
from cxr.export.export_types import DEFAULT_EXTERNAL_DATA_THRESHOLD, DEFAULT_INT8_MAX_PROBABILITY_CHANGE
from cxr.export.nncf_int8 import depthwise_convs, float_layers, mean_probability_change, nncf_quantize
from cxr.export.onnx_files import (
    external_data_path,
    move_into_place,
    onnx_sha256,
    onnx_size_bytes,
    read_metadata,
    save_onnx,
    set_metadata,
)
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
INT8_PRESETS: tuple[str, ...] = ("auto", "performance", "mixed")
MIXED_PRESET_OPS = frozenset({"LayerNormalization", "Erf", "Gelu"})  # ConvNeXt: asymmetric activations


@dataclass(frozen=True, kw_only=True)
class VariantConfig:
    """What every variant takes: the inputs it is verified on, the bar, and where it is written."""

    verify_inputs: np.ndarray = field(repr=False, compare=False)
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    out: Path | None = None  # default: <name>.<precision>.onnx beside the source
    threads: int | None = None
    batch_size: int = 8
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    sources: dict[str, int] | None = field(default=None, compare=False)  # where verify_inputs came from

    def __post_init__(self) -> None:
        _check_inputs(self.verify_inputs, "verify_inputs")
        if not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(
                f"min_agreement {self.min_agreement} must be in (0, 1]", hint="for example 0.99"
            )


@dataclass(frozen=True, kw_only=True)
class Fp16Config(VariantConfig):
    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS


@dataclass(frozen=True, kw_only=True)
class Int8Config(VariantConfig):
    """NNCF post-training INT8; ``verify_inputs`` (the val split) are also accuracy control's validation set."""

    calibration: np.ndarray = field(repr=False, compare=False)
    preset: Literal["auto", "performance", "mixed"] = "auto"  # auto: mixed where the graph has LayerNorm/GELU
    fast_bias_correction: bool = False  # full: slower; it kept Xception's top-1 (benchmarks)
    accuracy_control: bool = True  # keep in float the layers that move the probabilities most, worst first
    # accuracy control's bar: the mean change of the class probabilities on the val images (nncf_int8)
    max_probability_change: float = DEFAULT_INT8_MAX_PROBABILITY_CHANGE
    # at most this many groups of layers go back to float (NNCF's max_num_iterations; each step may re-rank
    # every remaining group, minutes on a paper member): the bar may stay unmet, the card says by how much
    max_float_groups: int = 10
    keep_depthwise_float: bool = (
        True  # depthwise convolutions stay FP32 (an ignored scope; see the docstring)
    )
    ignored_op_types: tuple[str, ...] = ()  # ONNX op types that stay FP32
    overflow_fix: Literal["first_layer", "enable", "disable"] = "first_layer"  # AVX2/AVX-512 U8xS8 saturation
    calibration_source: str = "given"  # for the report: "train", "synthetic"...

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_inputs(self.calibration, "calibration")
        if not 0.0 < self.max_probability_change < 1.0:
            raise ConfigError(
                f"max_probability_change {self.max_probability_change} must be in (0, 1)",
                hint="for example 0.005",
            )
        if self.max_float_groups < 1:
            raise ConfigError(f"max_float_groups {self.max_float_groups} must be >= 1", hint="for example 10")
        if self.preset not in INT8_PRESETS:
            raise ConfigError(
                f"unknown INT8 preset {self.preset!r}", hint=f"use one of {', '.join(INT8_PRESETS)}"
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


def variant_path(src: Path, precision: str) -> Path:
    """``<name>.onnx`` -> ``<name>.<precision>.onnx`` in the same folder."""
    return Path(src).with_name(f"{Path(src).stem}.{precision}.onnx")


def make_fp16(src: Path, cfg: Fp16Config) -> VariantResult:
    """Convert ``src`` to FP16 (FP32 I/O, sensitive ops FP32), verify against it, write if it agrees."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.keep_fp32_ops))
    settings = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "fp32_ops": block}

    def build(tmp: Path) -> onnx.ModelProto:
        return convert_float_to_float16(str(src), keep_io_types=True, op_block_list=block)

    return _make_variant(Path(src), "fp16", build, cfg, settings)


def make_int8(src: Path, cfg: Int8Config) -> VariantResult:
    """NNCF INT8 (QDQ) of ``src`` calibrated on ``cfg.calibration``, with accuracy control on
    ``cfg.verify_inputs`` against ``src``'s class probabilities; verify against it, write if it agrees."""
    import nncf

    src = Path(src)
    model = onnx.load(str(src))
    ops = {n.op_type for n in model.graph.node}
    preset = cfg.preset if cfg.preset != "auto" else ("mixed" if ops & MIXED_PRESET_OPS else "performance")
    ignored = sorted(
        {n.name for n in model.graph.node if n.op_type in cfg.ignored_op_types}
        | (set(depthwise_convs(model)) if cfg.keep_depthwise_float else set())
    )
    settings: dict[str, Any] = {
        "quantizer": f"nncf {nncf.__version__}",
        "format": "QDQ",
        "preset": preset,
        "fast_bias_correction": cfg.fast_bias_correction,
        "overflow_fix": cfg.overflow_fix,
        "ignored_layers": ignored,
        "accuracy_control": cfg.accuracy_control,
        "max_probability_change": cfg.max_probability_change if cfg.accuracy_control else None,
        "max_float_groups": cfg.max_float_groups if cfg.accuracy_control else None,
        "calibration_images": int(len(cfg.calibration)),
        "calibration_source": cfg.calibration_source,
        "validation_images": int(len(cfg.verify_inputs)),
    }

    def build(tmp: Path) -> onnx.ModelProto:
        try:
            quantized = nncf_quantize(model, cfg, preset, ignored, tmp)
        except Exception as e:  # NNCF's full bias correction cannot extract some graphs' subgraphs
            if cfg.fast_bias_correction:
                raise
            log.warning(
                "%s: full bias correction failed (%s); using fast bias correction", src.name, first_line(e)
            )
            settings["fast_bias_correction"] = True
            settings["full_bias_correction_failed"] = first_line(e)
            quantized = nncf_quantize(model, replace(cfg, fast_bias_correction=True), preset, ignored, tmp)
        settings["float_layers"] = float_layers(quantized)
        settings["val_mean_probability_change"] = round(
            mean_probability_change(model, quantized, cfg.verify_inputs, cfg.threads, cfg.batch_size), 6
        )
        if (plain := tmp / "intermediate_model.onnx").is_file():  # before accuracy control reverted any
            before = set(float_layers(onnx.load(str(plain))))
            settings["kept_float_by_accuracy_control"] = [
                n for n in settings["float_layers"] if n not in before
            ]
        return quantized

    return _make_variant(src, "int8", build, cfg, settings)


def _make_variant(
    src: Path, precision: str, build: Any, cfg: VariantConfig, settings: dict[str, Any]
) -> VariantResult:
    """Build the variant in a scratch folder, verify it against ``src``, and move it into place if it agrees."""
    meta = _fp32_metadata(src)
    t0 = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else variant_path(src, precision)
    fp32_sha = onnx_sha256(src)
    name = str(meta.card.get("member") or src.stem)
    vcfg = variant_verify_config(name, precision, cfg.min_agreement, cfg.threads, cfg.batch_size)

    def reject(reason: str, report: VerifyReport | None = None) -> VariantResult:
        for stale in (out, external_data_path(out)):
            stale.unlink(missing_ok=True)
        log.warning("%s variant %s rejected: %s", precision, out.name, reason)
        seconds = time.perf_counter() - t0
        return VariantResult(precision, None, False, reason, seconds, 0, fp32_sha, report, settings=settings)

    with tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent) as tmp_dir:
        try:
            with quiet_onnxruntime():
                proto = build(Path(tmp_dir))
        except CxrError:
            raise
        except Exception as e:  # converters and quantizers raise assorted errors on unsupported graphs
            return reject(f"{precision} conversion failed: {first_line(e)}")
        staged = Path(tmp_dir) / "staged" / out.name
        save_onnx(proto, staged, cfg.external_data_threshold)
        try:
            report = verify_against_onnx(
                src, staged, cfg.verify_inputs, vcfg, candidate=f"onnx {precision}", sources=cfg.sources
            )
        except ModelError as e:
            return reject(f"onnxruntime cannot run the {precision} graph: {e.message}")
        if not report.passed:
            return reject(f"not usable: {'; '.join(report.reasons)}", report)
        proto = onnx.load(str(staged))  # rewritten with the FP32 metadata plus the variant's card keys
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
        move_into_place(staged, out)
    seconds = time.perf_counter() - t0
    result = VariantResult(
        precision, out, True, None, seconds, onnx_size_bytes(out), fp32_sha, report, settings=settings
    )
    log.info("%s: %s", out, report.summary())
    return result


def variant_verify_config(
    name: str, precision: str, min_agreement: float, threads: int | None, batch_size: int = 8
) -> VerifyConfig:
    """Top-1 agreement with the FP32 file is the bar; no absolute tolerance, ties not excused."""
    return VerifyConfig(
        name=f"{name} {precision}",
        atol=None,
        min_top1=min_agreement,
        tie_margin=0.0,
        strict=False,
        batch_size=batch_size,
        threads=threads,
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


def _check_inputs(inputs: np.ndarray, what: str) -> None:
    arr = np.asarray(inputs)
    if arr.ndim != 4 or len(arr) == 0 or arr.dtype != np.float32:
        raise ConfigError(
            f"{what} must be a non-empty float32 array [N, C, H, W], got {arr.dtype} {arr.shape}",
            hint="preprocess images with cxr.imaging.preprocess.to_model_input(..., normalized=True)",
        )


def _not_onnxruntime_chatter(record: logging.LogRecord) -> bool:
    """Drops onnxruntime's converter/quantizer INFO records (it logs whole node protos at INFO)."""
    return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Scoped: onnxruntime's tools log on the root logger and their module loggers."""
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("onnxruntime")),
    ]
    for lg in loggers:
        lg.addFilter(_not_onnxruntime_chatter)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(_not_onnxruntime_chatter)
