"""Export one trained PyTorch classifier to an ONNX file that a torch-free runtime can trust.

Takes: an ``nn.Module`` (eval mode, CPU) and an ``ExportConfig`` (output path, cxr metadata, input size,
opset, exporter). Makes: ``ExportResult`` and the file ``cfg.out`` with
- one input ``INPUT_NAME`` float32 [batch, C, H, W] (normalised) and one output ``OUTPUT_NAME`` float32
  [batch, K] (raw logits), the batch axis dynamic and named ``BATCH_AXIS``;
- a pinned opset (``DEFAULT_OPSET`` = 17, so LayerNorm is one ``LayerNormalization`` op);
- cxr metadata (``ModelMetadata.to_props()``) whose card records exporter, opset, versions and FLOPs;
- ONNX external data when the weights exceed ``external_data_threshold``.

Steps: trace at ``trace_batch`` (>= 2: a batch-1 trace can bake the batch into Reshape/Flatten), run
``onnx.checker.check_model(full_check=True)``, compare onnxruntime with PyTorch at every batch size in
``check_batches``, simplify with onnxsim and keep the simplified graph only if it passes the same checks
(otherwise the unsimplified graph is written and the reason recorded). A graph that fails is never written.
The parts: ``export_types`` (names, config, result), ``exporters`` (which exporter, the trace), ``checks``
(I/O contract, batch parity), ``metadata`` (the card) and ``onnx_files`` (saving, moving into place).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from cxr.errors import ConfigError, ModelError, VerificationError, first_line
from cxr.export.adaptive_pool import adaptive_pool_matrix
from cxr.export.checks import References, batch_checks, check_io, describe_failures, reference_logits
from cxr.export.export_types import (
    BATCH_AXIS,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DEFAULT_OPSET,
    DYNAMIC_AXES,
    DYNAMO_MIN_OPSET,
    EXPORTERS,
    EXTERNAL_DATA_MARGIN,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    PROTOBUF_LIMIT,
    BatchCheck,
    ExportConfig,
    Exporter,
    ExporterChoice,
    ExportResult,
)
from cxr.export.exporters import DEFAULT_CHOICE, EXPORTER_CHOICES, choose_exporter, run_exporter
from cxr.export.flops import count_flops
from cxr.export.metadata import (
    card_str,
    export_versions,
    opset_of,
    read_metadata,
    set_metadata,
    write_member_metadata,
)
from cxr.export.onnx_files import (
    external_data_path,
    model_nbytes,
    move_into_place,
    onnx_sha256,
    onnx_size_bytes,
    save_onnx,
)

__all__ = [  # the names importable from here before the export was split by responsibility
    "BATCH_AXIS",
    "DEFAULT_CHOICE",
    "DEFAULT_EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_OPSET",
    "DYNAMIC_AXES",
    "DYNAMO_MIN_OPSET",
    "EXPORTERS",
    "EXPORTER_CHOICES",
    "EXTERNAL_DATA_MARGIN",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "PROTOBUF_LIMIT",
    "BatchCheck",
    "ExportConfig",
    "ExportResult",
    "Exporter",
    "ExporterChoice",
    "adaptive_pool_matrix",
    "check_opset",
    "choose_exporter",
    "export_onnx",
    "export_versions",
    "external_data_path",
    "model_nbytes",
    "onnx_sha256",
    "onnx_size_bytes",
    "read_metadata",
    "save_onnx",
    "set_metadata",
]

log = logging.getLogger(__name__)


def check_opset(opset: int) -> None:
    """Refuse an opset below 17, above what onnx knows, or one the installed onnxruntime cannot run."""
    import onnxruntime as ort

    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise ConfigError(
            f"opset {opset} is not supported for export",
            hint=f"use an opset from {MIN_OPSET} (LayerNorm as one op) to {newest} (onnx {onnx.__version__})",
        )
    if not _ort_runs_opset(opset):
        best = max((v for v in range(MIN_OPSET, opset) if _ort_runs_opset(v)), default=None)
        raise ConfigError(
            f"onnxruntime {ort.__version__} cannot run opset {opset}",
            hint=(f"export with --opset {best}" if best else "upgrade onnxruntime")
            + " or upgrade onnxruntime so that the runtime can load the file",
        )


def _ort_runs_opset(opset: int) -> bool:
    from cxr.session import cpu_session

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    ops = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=ops)
    model.ir_version = onnx.helper.find_min_ir_version_for(ops)
    try:
        cpu_session(model.SerializeToString())
    except Exception:  # onnxruntime raises its own untyped errors for unsupported opsets
        return False
    return True


def export_onnx(model: torch.nn.Module, cfg: ExportConfig) -> ExportResult:
    """Export, check, simplify and write ``model`` as described in the module docstring."""
    t0 = time.perf_counter()
    check_opset(cfg.opset)
    timm_name = cfg.timm_name or card_str(cfg.metadata, "timm_name")
    choice = choose_exporter(timm_name, cfg.exporter, cfg.opset)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent) as tmp_dir:
            tmp = Path(tmp_dir)
            raw = run_exporter(model, cfg, choice, tmp)
            check_io(raw, cfg)
            refs = reference_logits(model, cfg)
            shipped = _simplify_and_check(raw, refs, cfg, choice, tmp / out.name)
            move_into_place(tmp / out.name, out)
    finally:
        model.train(was_training)
    result = ExportResult(
        path=out,
        exporter=choice.exporter,
        exporter_reason=choice.reason,
        simplified=shipped.simplified,
        simplify_reason=shipped.reason,
        seconds=time.perf_counter() - t0,
        size_bytes=onnx_size_bytes(out),
        flops_per_image=shipped.flops,
        opset=shipped.opset,
        ir_version=shipped.ir_version,
        external_data=shipped.external,
        sha256=onnx_sha256(out),
        batch_checks=shipped.checks,
    )
    log.info(
        "exported %s (%s, %.1f s, %.1f MiB)", out, choice.exporter, result.seconds, result.size_bytes / 2**20
    )
    return result


@dataclass(frozen=True)
class _Shipped:
    simplified: bool
    reason: str | None
    flops: int
    opset: int
    ir_version: int
    external: bool
    checks: tuple[BatchCheck, ...]


class _Rejected(Exception):
    pass


def _simplify_and_check(
    raw: onnx.ModelProto,
    refs: References,
    cfg: ExportConfig,
    choice: ExporterChoice,
    staged: Path,
) -> _Shipped:
    """Write to ``staged`` the graph to ship: simplified if it passes every check, else the raw one if it does.

    Each candidate gets its metadata, is written once, then checked from the file: ``check_model`` with
    ``full_check`` and onnxruntime against PyTorch at every batch size.
    """
    reason: str | None = "simplification not asked for (--no-simplify)"
    if cfg.simplify:
        simplified, reason = _try_simplify(raw)
        if simplified is not None:
            try:
                return _stage(simplified, True, None, refs, cfg, choice, staged)
            except _Rejected as e:
                reason = f"{e}; kept the unsimplified graph"
            log.warning("%s: %s", cfg.out, reason)
    try:
        return _stage(raw, False, reason, refs, cfg, choice, staged)
    except _Rejected as e:
        raise VerificationError(
            f"{cfg.out.stem}: the exported graph is wrong: {e}; nothing was written",
            hint="try the other exporter (--exporter torchscript|dynamo --opset 18); if only batch sizes other "
            f"than {cfg.trace_batch} fail, the batch size was baked into the graph",
        ) from None


def _stage(
    proto: onnx.ModelProto,
    simplified: bool,
    reason: str | None,
    refs: References,
    cfg: ExportConfig,
    choice: ExporterChoice,
    staged: Path,
) -> _Shipped:
    what = "the simplified graph" if simplified else "the graph"
    flops = count_flops(proto).flops_per_image
    write_member_metadata(proto, cfg, choice, flops, simplified, reason)
    opset, ir_version = opset_of(proto), int(proto.ir_version)
    external = save_onnx(proto, staged, cfg.external_data_threshold)  # moves external weights out of proto
    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except onnx.checker.ValidationError as e:
        raise _Rejected(f"{what} fails onnx.checker (full check): {first_line(e)}") from e
    try:
        checks = batch_checks(staged, refs, cfg)
    except ModelError as e:
        raise _Rejected(f"onnxruntime cannot run {what}: {e.message}") from e
    if not all(c.passed for c in checks):
        raise _Rejected(
            f"{what} differs from PyTorch ({describe_failures(checks)}, tolerance {cfg.check_atol:g})"
        )
    return _Shipped(simplified, reason, flops, opset, ir_version, external, checks)


def _try_simplify(raw: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    if model_nbytes(raw) >= DEFAULT_EXTERNAL_DATA_THRESHOLD:
        return None, "onnxsim cannot simplify models over 2 GB; kept the unsimplified graph"
    try:
        import onnxsim
    except ImportError:
        return None, "onnxsim is not installed (pip install onnxsim); kept the unsimplified graph"
    try:
        simplified, ok = onnxsim.simplify(_copy(raw), check_n=0)
    except Exception as e:  # onnxsim raises RuntimeError and friends from its C++ core
        return None, f"onnxsim failed ({first_line(e)}); kept the unsimplified graph"
    if not ok:
        return None, "onnxsim could not validate its result; kept the unsimplified graph"
    return simplified, None


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out
