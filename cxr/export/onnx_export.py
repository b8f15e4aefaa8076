"""Export one trained PyTorch classifier to an ONNX file that a torch-free runtime can trust.

Takes: an ``nn.Module`` and an ``ExportConfig``. Makes: ``cfg.out`` and an ``ExportResult``. The graph has one
input ``INPUT_MEMBER`` [batch, C, H, W] (normalised float32) and one output ``OUTPUT_LOGITS`` [batch, K]
(logits), a dynamic batch axis, the pinned opset and cxr metadata. It is traced at ``trace_batch`` >= 2,
checked with ``onnx.checker`` (full check) and against PyTorch at every batch in ``check_batches``, then
simplified with onnxsim, kept only if it passes the same checks. A graph that fails is never written.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from cxr.errors import ConfigError, ModelError, VerificationError, first_line
from cxr.export.export_types import (
    BATCH_AXIS,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    MIN_OPSET,
    BatchCheck,
    ExportConfig,
    ExporterChoice,
    ExportResult,
)
from cxr.export.exporters import choose_exporter, run_exporter
from cxr.export.flops import count_flops
from cxr.export.onnx_files import (
    model_nbytes,
    move_into_place,
    onnx_sha256,
    onnx_size_bytes,
    opset_of,
    save_onnx,
    set_metadata,
)
from cxr.export.verify import VerifyConfig, compare_logits, onnx_logits, open_session, torch_logits
from cxr.spec import INPUT_MEMBER, OUTPUT_LOGITS

log = logging.getLogger(__name__)

References = dict[int, tuple[np.ndarray, np.ndarray]]  # batch size -> (inputs, PyTorch logits)


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
    """Export, check, simplify and write ``model`` (see the module docstring)."""
    t0 = time.perf_counter()
    check_opset(cfg.opset)
    card_name = cfg.metadata.card.get("timm_name")
    timm_name = cfg.timm_name or (None if card_name is None else str(card_name))
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
    seconds = time.perf_counter() - t0
    result = replace(shipped, seconds=seconds, size_bytes=onnx_size_bytes(out), sha256=onnx_sha256(out))
    log.info(
        "exported %s (%s, %.1f s, %.1f MiB)", out, choice.exporter, result.seconds, result.size_bytes / 2**20
    )
    return result


class _Rejected(Exception):
    pass


def _simplify_and_check(
    raw: onnx.ModelProto,
    refs: References,
    cfg: ExportConfig,
    choice: ExporterChoice,
    staged: Path,
) -> ExportResult:
    """Write to ``staged`` the simplified graph if it passes every check, else the raw one if it does."""
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
) -> ExportResult:
    what = "the simplified graph" if simplified else "the graph"
    flops = count_flops(proto).flops_per_image
    _write_member_metadata(proto, cfg, choice, flops, simplified, reason)
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
        bad = [c for c in checks if not c.passed]
        why = ", ".join(
            f"batch {c.batch}: max abs {c.max_abs:.2e}, top-1 {c.top1_agreement:.0%}" for c in bad
        )
        raise _Rejected(f"{what} differs from PyTorch ({why}, tolerance {cfg.check_atol:g})")
    path, exporter = Path(cfg.out), choice.exporter  # seconds, size and hash are filled in once it is moved
    return ExportResult(
        path,
        exporter,
        choice.reason,
        simplified,
        reason,
        0.0,
        0,
        flops,
        opset,
        ir_version,
        external,
        "",
        checks,
    )


def _try_simplify(raw: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    if model_nbytes(raw) >= DEFAULT_EXTERNAL_DATA_THRESHOLD:
        return None, "onnxsim cannot simplify models over 2 GB; kept the unsimplified graph"
    try:
        import onnxsim
    except ImportError:
        return None, "onnxsim is not installed (pip install onnxsim); kept the unsimplified graph"
    try:
        simplified, ok = onnxsim.simplify(copy.deepcopy(raw), check_n=0)
    except Exception as e:  # onnxsim raises RuntimeError and friends from its C++ core
        return None, f"onnxsim failed ({first_line(e)}); kept the unsimplified graph"
    if not ok:
        return None, "onnxsim could not validate its result; kept the unsimplified graph"
    return simplified, None


def check_io(proto: onnx.ModelProto, cfg: ExportConfig) -> None:
    """Exactly one input ``INPUT_MEMBER`` [batch, C, H, W] and one output ``OUTPUT_LOGITS`` [batch, K]."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    outputs = list(proto.graph.output)
    if [i.name for i in inputs] != [INPUT_MEMBER] or [o.name for o in outputs] != [OUTPUT_LOGITS]:
        raise ModelError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"expected [{INPUT_MEMBER!r}] and [{OUTPUT_LOGITS!r}]",
            hint="export a classifier whose forward takes one image tensor and returns one logits tensor",
        )
    k = len(cfg.metadata.classes)
    out_dims = _dims(outputs[0])
    if len(out_dims) != 2 or out_dims[1] != k:
        raise ModelError(
            f"the model outputs shape {out_dims}, but the metadata lists {k} classes "
            f"({', '.join(cfg.metadata.classes)})",
            hint="build the model with num_classes equal to the class list, or fix the class list",
        )
    for value in (inputs[0], outputs[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise ModelError(
                f"the batch axis of {value.name!r} was exported as the fixed size {dim0.dim_value}",
                hint="report this: cxr exports a dynamic batch axis",
            )
        dim0.dim_param = BATCH_AXIS


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def reference_logits(model: torch.nn.Module, cfg: ExportConfig) -> References:
    """Inputs and PyTorch logits for every batch size in ``check_batches`` (seeded)."""
    rng = np.random.default_rng(cfg.seed + 1)
    c = cfg.metadata.preprocess.channels
    refs: References = {}
    for b in cfg.check_batches:
        x = rng.standard_normal((b, c, *cfg.input_size), dtype=np.float32)
        refs[b] = (x, torch_logits(model, x, batch_size=b))
    return refs


def batch_checks(path: Path, refs: References, cfg: ExportConfig) -> tuple[BatchCheck, ...]:
    """onnxruntime on the file at ``path`` vs the PyTorch references, one check per batch size."""
    session = open_session(path, threads=cfg.threads)
    checks = []
    vcfg = VerifyConfig(name=path.name, atol=cfg.check_atol, strict=False)
    for b, (x, ref) in refs.items():
        got = onnx_logits(session, x, batch_size=b)
        rep = compare_logits(ref, got, vcfg, reference="pytorch", candidate=f"onnx batch {b}")
        checks.append(BatchCheck(b, rep.max_abs, rep.top1_agreement, rep.passed))
    return tuple(checks)


def export_versions() -> dict[str, str]:
    """Versions of the packages that shaped an exported file."""
    import importlib.metadata as md

    out: dict[str, str] = {"torch": torch.__version__, "onnx": onnx.__version__}
    for dist in ("onnxruntime", "timm", "onnxsim", "onnxscript", "cxr-toolkit"):
        key = "cxr" if dist == "cxr-toolkit" else dist
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = "not installed"
    return out


def _write_member_metadata(
    proto: onnx.ModelProto,
    cfg: ExportConfig,
    choice: ExporterChoice,
    flops: int,
    simplified: bool,
    reason: str | None,
) -> None:
    """The FP32 member's metadata: ``cfg.metadata`` plus what the export did, and its doc string."""
    card = {
        **dict(cfg.metadata.card),
        "precision": "fp32",
        "exporter": choice.exporter,
        "exporter_reason": choice.reason,
        "opset": opset_of(proto),
        "ir_version": int(proto.ir_version),
        "flops_per_image": flops,
        "simplified": simplified,
        "simplify_note": reason,
        "export_versions": export_versions(),
        "input_name": INPUT_MEMBER,
        "output_name": OUTPUT_LOGITS,
        "output_kind": OUTPUT_LOGITS,
    }
    set_metadata(proto, replace(cfg.metadata, card=card))
    proto.producer_name = "cxr"
    proto.doc_string = (
        "cxr member classifier: input normalised float32 [batch, C, H, W], output logits [batch, K]"
    )
