"""NNCF post-training INT8 of an ONNX member: takes the FP32 ``onnx.ModelProto`` and an ``Int8Config``; makes the
QDQ ``ModelProto`` (``nncf.quantize``, or ``nncf.quantize_with_accuracy_control`` against the FP32 member's
class probabilities on the config's validation images), and names the layers left in float.

Accuracy control's metric is 1 - the mean change between the INT8 and the FP32 member's class probabilities
(per image: their total-variation distance, half the L1 distance, 0 = identical; 1 where the member's top-1
changed), not top-1 alone: a stacked ensemble turns a member's probability drift into changed answers near the
meta-learner's boundary while every member keeps its own top-1 (benchmarks/README.md, "INT8 verdict on the
rehearsal ensemble")."""

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
    def max_probability_change(self) -> float: ...
    @property
    def max_float_groups(self) -> int: ...
    @property
    def threads(self) -> int | None: ...
    @property
    def batch_size(self) -> int: ...


def nncf_quantize(
    model: onnx.ModelProto, cfg: Int8Settings, preset: str, ignored: list[str], tmp: Path
) -> onnx.ModelProto:
    """``nncf.quantize`` (or ``quantize_with_accuracy_control`` at ``cfg.max_probability_change``) of ``model``;
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
    reference = _probabilities(_session(model, cfg.threads), cfg.verify_inputs, cfg.batch_size)
    # one image per item: NNCF ranks the layers by each item's metric
    validation = nncf.Dataset([(x[None], p) for x, p in zip(cfg.verify_inputs, reference, strict=True)])
    sessions = _LastSession(cfg.threads)

    def closeness(candidate: onnx.ModelProto, items: Any) -> tuple[float, None]:
        """1 - the mean change over ``items``: an image's total-variation distance to the FP32 member's
        probabilities, or 1 where the member's own top-1 changed (the member's top-1 bar stays met)."""
        pairs = list(items)
        x = np.concatenate([x for x, _ in pairs])
        want = np.stack([p for _, p in pairs])
        got = _probabilities(sessions.get(candidate), x, cfg.batch_size)
        return 1.0 - float(np.mean(_change(got, want))), None

    return nncf.quantize_with_accuracy_control(
        model,
        calibration,
        validation,
        closeness,
        max_drop=cfg.max_probability_change,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=cfg.max_float_groups, intermediate_model_dir=str(tmp)
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


def _change(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per image: half the L1 distance between the probabilities, 1 where the top-1 differs."""
    tv = 0.5 * np.abs(got - want).sum(axis=1)
    return np.where(got.argmax(axis=1) == want.argmax(axis=1), tv, 1.0)


def mean_probability_change(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, x: np.ndarray, threads: int | None, batch: int
) -> float:
    """Accuracy control's mean change of ``int8`` against ``fp32`` on ``x`` (see ``_change``)."""
    want = _probabilities(_session(fp32, threads), x, batch)
    got = _probabilities(_session(int8, threads), x, batch)
    return float(np.mean(_change(got, want)))


class _LastSession:
    """The onnxruntime session of the last model asked for: NNCF validates one candidate item by item."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.model: onnx.ModelProto | None = None
        self.session: Any = None

    def get(self, model: onnx.ModelProto) -> Any:
        if model is not self.model:
            self.model, self.session = model, _session(model, self.threads)
        return self.session


def _probabilities(session: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """Softmax of the member's logits over ``x`` [N, C, H, W], in batches: [N, K] float64."""
    logits = np.concatenate([session.run(None, {INPUT_MEMBER: b})[0] for b in _batches(x, batch)])
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
