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
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from cxr.errors import ConfigError, ModelError, VerificationError
from cxr.export.flops import count_flops
from cxr.export.onnx_files import (
    external_data_path,
    model_nbytes,
    onnx_sha256,
    onnx_size_bytes,
    save_onnx,
)
from cxr.export.verify import compare_logits, onnx_logits, torch_logits
from cxr.spec import ModelMetadata

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DYNAMIC_AXES: dict[str, dict[int, str]] = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
"""Derived from the names above, so names and dynamic axes cannot drift apart."""

DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization is one op from opset 17
DYNAMO_MIN_OPSET = 18  # torch 2.14's dynamo exporter writes opset >= 18 and cannot convert down reliably
PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_MARGIN = 64 * 1024**2
DEFAULT_EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - EXTERNAL_DATA_MARGIN
"""Weights above this many bytes go to ``<name>.onnx.data`` (the margin leaves room for the graph)."""

Exporter = Literal["auto", "torchscript", "dynamo"]
EXPORTERS: tuple[str, ...] = ("auto", "torchscript", "dynamo")


@dataclass(frozen=True)
class ExporterChoice:
    exporter: Literal["torchscript", "dynamo"]
    reason: str


_TS_REASON = (
    "TorchScript exporter: writes the pinned opset 17 (torch 2.14's dynamo exporter writes >= 18 and its "
    "down-conversion failed here), exports in 1-5 s vs 4-15 s"
)
EXPORTER_CHOICES: dict[str, ExporterChoice] = {
    "convnext_base": ExporterChoice(
        "torchscript",
        f"{_TS_REASON}; LayerNorm2d becomes one LayerNormalization (dynamo also needs a batch >= 2 trace)",
    ),
    "densenet121": ExporterChoice("torchscript", f"{_TS_REASON}; dynamo took 15 s for densenet121"),
    "vgg19": ExporterChoice(
        "torchscript",
        f"{_TS_REASON}; below 224 px VGG's ConvMlp upsamples with adaptive_avg_pool2d, exported as two "
        "exact MatMuls by cxr's scoped symbolic",
    ),
    "resnetv2_50": ExporterChoice(
        "torchscript", f"{_TS_REASON}; StdConv weight standardisation folds to constants in onnxsim"
    ),
    "legacy_xception": ExporterChoice(
        "torchscript", f"{_TS_REASON}; symmetric padding, so the input size is not frozen in Pad nodes"
    ),
}
DEFAULT_CHOICE = ExporterChoice("torchscript", f"{_TS_REASON} (default for architectures not in the table)")


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    metadata: ModelMetadata
    input_size: tuple[int, int]
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    trace_batch: int = 2
    simplify: bool = True
    check_batches: tuple[int, ...] = (1, 3, 8)
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    check_atol: float = 1e-4  # max |p_onnx - p_torch| of the class probabilities in the batch checks
    timm_name: str | None = None  # picks the exporter in "auto"; default: metadata.card["timm_name"]
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if Path(self.out).suffix != ".onnx":
            raise ConfigError(
                f"output {self.out} must end in .onnx", hint="for example onnx/densenet121.onnx"
            )
        if tuple(self.input_size) != tuple(self.metadata.preprocess.input_size):
            raise ConfigError(
                f"input_size {self.input_size} differs from the metadata's preprocessing input size "
                f"{self.metadata.preprocess.input_size}",
                hint="export at the size the model was trained at (the PreprocessSpec's input_size)",
            )
        if self.exporter not in EXPORTERS:
            raise ConfigError(
                f"unknown exporter {self.exporter!r}", hint=f"use one of {', '.join(EXPORTERS)}"
            )
        if self.trace_batch < 2:
            raise ConfigError(
                f"trace_batch {self.trace_batch} is too small",
                hint="trace with batch >= 2: a batch-1 trace can bake the batch size into Reshape/Flatten",
            )
        if not self.check_batches or any(b < 1 for b in self.check_batches):
            raise ConfigError(f"check_batches {self.check_batches} must be positive batch sizes")
        if self.external_data_threshold < 0:
            raise ConfigError(f"external_data_threshold {self.external_data_threshold} must be >= 0")


@dataclass(frozen=True)
class BatchCheck:
    batch: int
    max_abs: float
    top1_agreement: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    exporter_reason: str
    simplified: bool
    simplify_reason: str | None  # why the graph was not simplified (None when it was)
    seconds: float
    size_bytes: int  # the .onnx file plus its external data, if any
    flops_per_image: int
    opset: int
    ir_version: int
    external_data: bool
    sha256: str
    batch_checks: tuple[BatchCheck, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def choose_exporter(timm_name: str | None, requested: Exporter, opset: int) -> ExporterChoice:
    """The exporter for ``timm_name``: the table's choice in ``auto``, else the one asked for."""
    if requested == "auto":
        choice = EXPORTER_CHOICES.get(timm_name or "", DEFAULT_CHOICE)
    elif requested in ("torchscript", "dynamo"):
        choice = ExporterChoice(requested, f"{requested} exporter asked for explicitly")
    else:
        raise ConfigError(f"unknown exporter {requested!r}", hint=f"use one of {', '.join(EXPORTERS)}")
    if choice.exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ConfigError(
            f"the dynamo exporter of torch {torch.__version__} writes opset >= {DYNAMO_MIN_OPSET}, "
            f"not the requested {opset}",
            hint=f"pass --opset {DYNAMO_MIN_OPSET} with --exporter dynamo, or use --exporter torchscript",
        )
    return choice


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
    timm_name = cfg.timm_name or _card_str(cfg.metadata, "timm_name")
    choice = choose_exporter(timm_name, cfg.exporter, cfg.opset)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent) as tmp_dir:
            tmp = Path(tmp_dir)
            raw = _run_exporter(model, cfg, choice, tmp)
            _check_io(raw, cfg)
            refs = _reference_logits(model, cfg)
            shipped = _simplify_and_check(raw, refs, cfg, choice, tmp / out.name)
            _move_into_place(tmp / out.name, out)
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


# ---------------------------------------------------------------------------------------------------------
# Exporters
# ---------------------------------------------------------------------------------------------------------


def _run_exporter(
    model: torch.nn.Module, cfg: ExportConfig, choice: ExporterChoice, tmp: Path
) -> onnx.ModelProto:
    channels = cfg.metadata.preprocess.channels
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.trace_batch, channels, *cfg.input_size, generator=gen)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            if choice.exporter == "torchscript":
                kwargs: dict[str, Any] = dict(
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=DYNAMIC_AXES,
                    opset_version=cfg.opset,
                    do_constant_folding=True,
                )
                with _adaptive_pool_symbolic(cfg.opset):
                    if _param_bytes(model) < DEFAULT_EXTERNAL_DATA_THRESHOLD:  # in memory, no disk round trip
                        buf = io.BytesIO()
                        torch.onnx.export(model, (x,), buf, **kwargs)  # type: ignore[arg-type]
                        return onnx.load_from_string(buf.getvalue())
                    path = tmp / "torchscript.onnx"  # over 2 GB: the exporter writes external data
                    torch.onnx.export(model, (x,), str(path), **kwargs)
                return onnx.load(str(path))
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS, min=1)},),
                opset_version=cfg.opset,
                optimize=True,
                verbose=False,
            )
            if program is None:  # only returned as None when a file name is given
                raise ModelError("the dynamo exporter returned no program")
            return program.model_proto
    except ModelError:
        raise
    except (
        Exception
    ) as e:  # torch.onnx raises many error types (UnsupportedOperatorError, TorchExportError...)
        other = "dynamo --opset 18" if choice.exporter == "torchscript" else "torchscript"
        raise ModelError(
            f"torch.onnx ({choice.exporter} exporter, opset {cfg.opset}) cannot export "
            f"{_card_str(cfg.metadata, 'timm_name') or type(model).__name__}: {_first_line(e)}",
            hint=f"try --exporter {other}, or a newer --opset; an operator no exporter supports must be "
            "replaced in the model",
        ) from e


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@contextmanager
def _adaptive_pool_symbolic(opset: int) -> Iterator[None]:
    """Scoped TorchScript symbolic: adaptive average pooling to a size that does not divide the input.

    timm's VGG head pools a feature map smaller than 7x7 (inputs below 224 px) *up* to 7x7, which the
    TorchScript exporter refuses. With static spatial sizes adaptive pooling is a linear map, exported here
    as ``P_h @ x @ P_w^T`` (exact bins of ``torch.nn.functional.adaptive_avg_pool2d``). Other cases go to
    the exporter's own symbolic. The registration is removed on exit.
    """
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic
    from torch.onnx._internal.torchscript_exporter import registration, symbolic_helper

    name = "aten::adaptive_avg_pool2d"
    group = registration.registry.get_function_group(name)
    default = group.get(opset) if group is not None else None

    def symbolic(g: Any, x: Any, output_size: Any) -> Any:
        sizes = symbolic_helper._get_tensor_sizes(x)
        try:
            out_hw = symbolic_helper._parse_arg(output_size, "is")
        except Exception:  # not a constant: leave it to the default (which reports it)
            out_hw = None
        if sizes is None or len(sizes) != 4 or out_hw is None or any(s is None for s in sizes[2:]):
            return default(g, x, output_size) if default is not None else None
        h, w = int(sizes[2]), int(sizes[3])
        oh, ow = int(out_hw[0]), int(out_hw[1])
        if (h % oh == 0 and w % ow == 0) or (oh, ow) == (1, 1):
            return default(g, x, output_size) if default is not None else None
        ph = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(h, oh)))
        pw = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(w, ow).T.copy()))
        return g.op("MatMul", g.op("MatMul", ph, x), pw)

    register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic(name, opset)


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] float32 averaging matrix with PyTorch's adaptive pooling bins."""
    mat = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def _check_io(proto: onnx.ModelProto, cfg: ExportConfig) -> None:
    """Exactly one input ``INPUT_NAME`` [batch, C, H, W] and one output ``OUTPUT_NAME`` [batch, K]."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    outputs = list(proto.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ModelError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]",
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


def _reference_logits(model: torch.nn.Module, cfg: ExportConfig) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Inputs and PyTorch logits for every batch size in ``check_batches`` (seeded)."""
    rng = np.random.default_rng(cfg.seed + 1)
    c = cfg.metadata.preprocess.channels
    refs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in cfg.check_batches:
        x = rng.standard_normal((b, c, *cfg.input_size), dtype=np.float32)
        refs[b] = (x, torch_logits(model, x, batch_size=b))
    return refs


def _batch_checks(
    path: Path, refs: dict[int, tuple[np.ndarray, np.ndarray]], cfg: ExportConfig
) -> tuple[BatchCheck, ...]:
    from cxr.export.verify import VerifyConfig, open_session

    session = open_session(path, threads=cfg.threads)
    checks = []
    vcfg = VerifyConfig(name=path.name, atol=cfg.check_atol, strict=False)
    for b, (x, ref) in refs.items():
        got = onnx_logits(session, x, batch_size=b)
        rep = compare_logits(ref, got, vcfg, reference="pytorch", candidate=f"onnx batch {b}")
        checks.append(BatchCheck(b, rep.max_abs, rep.top1_agreement, rep.passed))
    return tuple(checks)


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
    refs: dict[int, tuple[np.ndarray, np.ndarray]],
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
    refs: dict[int, tuple[np.ndarray, np.ndarray]],
    cfg: ExportConfig,
    choice: ExporterChoice,
    staged: Path,
) -> _Shipped:
    what = "the simplified graph" if simplified else "the graph"
    flops = count_flops(proto).flops_per_image
    _write_metadata(proto, cfg, choice, flops, simplified, reason)
    opset, ir_version = _opset(proto), int(proto.ir_version)
    external = save_onnx(proto, staged, cfg.external_data_threshold)  # moves external weights out of proto
    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except onnx.checker.ValidationError as e:
        raise _Rejected(f"{what} fails onnx.checker (full check): {_first_line(e)}") from e
    try:
        checks = _batch_checks(staged, refs, cfg)
    except ModelError as e:
        raise _Rejected(f"onnxruntime cannot run {what}: {e.message}") from e
    if not all(c.passed for c in checks):
        raise _Rejected(
            f"{what} differs from PyTorch ({_describe_failures(checks)}, tolerance {cfg.check_atol:g})"
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
        return None, f"onnxsim failed ({_first_line(e)}); kept the unsimplified graph"
    if not ok:
        return None, "onnxsim could not validate its result; kept the unsimplified graph"
    return simplified, None


def _describe_failures(checks: tuple[BatchCheck, ...]) -> str:
    bad = [c for c in checks if not c.passed] or list(checks)
    return ", ".join(f"batch {c.batch}: max abs {c.max_abs:.2e}, top-1 {c.top1_agreement:.0%}" for c in bad)


# ---------------------------------------------------------------------------------------------------------
# Metadata and files
# ---------------------------------------------------------------------------------------------------------


def export_versions() -> dict[str, str]:
    """Versions of the packages that shaped an exported file."""
    import importlib.metadata as md

    out: dict[str, str] = {"torch": torch.__version__, "onnx": onnx.__version__}
    for dist, key in (
        ("onnxruntime", "onnxruntime"),
        ("timm", "timm"),
        ("onnxsim", "onnxsim"),
        ("onnxscript", "onnxscript"),
        ("cxr-toolkit", "cxr"),
    ):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = "not installed"
    return out


def _write_metadata(
    proto: onnx.ModelProto,
    cfg: ExportConfig,
    choice: ExporterChoice,
    flops: int,
    simplified: bool,
    reason: str | None,
) -> None:
    card = {
        **dict(cfg.metadata.card),
        "precision": "fp32",
        "exporter": choice.exporter,
        "exporter_reason": choice.reason,
        "opset": _opset(proto),
        "ir_version": int(proto.ir_version),
        "flops_per_image": flops,
        "simplified": simplified,
        "simplify_note": reason,
        "export_versions": export_versions(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output_kind": "logits",
    }
    set_metadata(proto, replace(cfg.metadata, card=card))
    proto.producer_name = "cxr"
    proto.doc_string = (
        "cxr member classifier: input normalised float32 [batch, C, H, W], output logits [batch, K]"
    )


def set_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace ``proto``'s metadata_props with cxr's metadata (JSON values)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata.to_props())


def read_metadata(path: Path) -> ModelMetadata:
    """The cxr metadata of an ONNX file (weights are not loaded)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as e:
        raise ModelError(f"{path} does not exist", hint="run `cxr export RUN_DIR` first", path=path) from e
    except Exception as e:  # onnx raises DecodeError and others on garbage
        raise ModelError(f"{path} is not a readable ONNX file: {_first_line(e)}", path=path) from e
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, source=str(path))


def _move_into_place(staged: Path, out: Path) -> None:
    """Move a staged file (and its external data) to ``out``, removing a stale data file there."""
    data_src, data_dst = external_data_path(staged), external_data_path(out)
    if data_dst.exists():
        data_dst.unlink()
    if data_src.exists():
        shutil.move(str(data_src), str(data_dst))
    staged.replace(out)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _opset(proto: onnx.ModelProto) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _card_str(metadata: ModelMetadata, key: str) -> str | None:
    value = metadata.card.get(key)
    return str(value) if value is not None else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:400]
