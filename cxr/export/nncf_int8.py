"""NNCF post-training INT8 of an ONNX member: takes the FP32 ``onnx.ModelProto`` and an ``Int8Config``; makes the
QDQ ``ModelProto`` (``nncf.quantize``, or ``nncf.quantize_with_accuracy_control`` against the FP32 member's
top-1 on the config's validation images), and names the layers left in float."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from cxr.spec import INPUT_MEMBER

WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})


class Int8Settings(Protocol):
    """What ``nncf_quantize`` reads (``cxr.export.quantize.Int8Config`` has it all)."""

    @property
    def calibration(self) -> np.ndarray: ...
    @property
    def verify_inputs(self) -> np.ndarray: ...
    @property
    def fast_bias_correction(self) -> bool: ...
    @property
    def overflow_fix(self) -> str: ...
    @property
    def accuracy_control(self) -> bool: ...
    @property
    def min_agreement(self) -> float: ...
    @property
    def threads(self) -> int | None: ...
    @property
    def batch_size(self) -> int: ...


def nncf_quantize(
    model: onnx.ModelProto, cfg: Int8Settings, preset: str, ignored: list[str], tmp: Path
) -> onnx.ModelProto:
    """``nncf.quantize`` (or ``quantize_with_accuracy_control`` at ``1 - cfg.min_agreement``) of ``model``;
    NNCF's own log says only warnings meanwhile (its per-layer INFO lines would flood the console)."""
    import nncf

    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        return _quantize(nncf, model, cfg, preset, ignored, tmp)
    finally:
        log.setLevel(level)


def _quantize(
    nncf: Any, model: onnx.ModelProto, cfg: Int8Settings, preset: str, ignored: list[str], tmp: Path
) -> onnx.ModelProto:
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    calibration = nncf.Dataset(list(_batches(cfg.calibration, 1)), lambda x: {INPUT_MEMBER: x})
    common: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset(preset),
        subset_size=len(cfg.calibration),
        fast_bias_correction=cfg.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
        advanced_quantization_parameters=AdvancedQuantizationParameters(
            overflow_fix=OverflowFix(
                {"first_layer": "first_layer_only"}.get(cfg.overflow_fix, cfg.overflow_fix)
            )
        ),
    )
    if not cfg.accuracy_control:
        advanced = common.pop("advanced_quantization_parameters")
        return nncf.quantize(model, calibration, advanced_parameters=advanced, **common)
    reference = _top1(model, cfg.verify_inputs, cfg.threads, cfg.batch_size)
    validation = nncf.Dataset(list(zip(_batches(cfg.verify_inputs, cfg.batch_size), reference, strict=True)))

    def agreement(candidate: onnx.ModelProto, items: Any) -> tuple[float, None]:
        """Top-1 agreement with the FP32 member; also what ranks the layers (NNCF 3.4 cannot rank ONNX models
        by their logits: it raises 'BackendType.ONNX backend is not supported')."""
        session = _session(candidate, cfg.threads)
        hits = [
            float(np.mean(session.run(None, {INPUT_MEMBER: x})[0].argmax(1) == want)) * len(x)
            for x, want in items
        ]
        return float(np.sum(hits) / max(sum(len(x) for x, _ in items), 1)), None

    return nncf.quantize_with_accuracy_control(
        model,
        calibration,
        validation,
        agreement,
        max_drop=round(1.0 - cfg.min_agreement, 6),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            intermediate_model_dir=str(tmp)
        ),
        **common,
    )


def _batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(x[i : i + batch], dtype=np.float32) for i in range(0, len(x), batch)]


def _session(model: onnx.ModelProto, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _top1(model: onnx.ModelProto, x: np.ndarray, threads: int | None, batch: int) -> list[np.ndarray]:
    """The FP32 member's top-1 per validation batch: the labels accuracy control keeps."""
    session = _session(model, threads)
    return [session.run(None, {INPUT_MEMBER: b})[0].argmax(1) for b in _batches(x, batch)]


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes with one group per input channel (weights [C, 1, k, k], group C > 1)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        dims = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if group > 1 and dims is not None and len(dims) == 4 and dims[1] == 1:
            out.append(n.name)
    return out


def float_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted layers (Conv, Gemm, MatMul) whose weights are not quantized: they run in float."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS
        and len(n.input) > 1
        and n.input[1] not in dequantized
        and (n.input[1] in inits or n.op_type != "MatMul")
    ]
