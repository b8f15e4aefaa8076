"""Takes an ONNX path, threads and a precision; makes an OpenVINO CPU session with onnxruntime's session
API."""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxr.errors import ModelError, ProviderError, first_line
from cxr.spec import META_VERIFIED_PRECISIONS

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISION_NAMES: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
BF16_RECORD = "openvino_bf16"
DEVICE = "CPU"
INSTALL_HINT = "pip install -e '.[openvino]' in a clone of cxr"
REFUSE_HINT = (
    "re-fuse the model with its OpenVINO BF16 check (`cxr fuse RUN_DIR` records cxr.verified_precisions), "
    "or use --precision fp32 (or auto)"
)
INT8_HINT = (
    "re-fuse the model with its INT8 check on a CPU of this kind (`cxr fuse RUN_DIR` records "
    "cxr.verified_precisions per CPU kind), or use --precision auto (or fp32)"
)
# OpenVINO element type names -> onnxruntime's NodeArg.type spelling
ORT_TYPES = {
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
    "bf16": "tensor(bfloat16)",
    "f64": "tensor(double)",
    "u8": "tensor(uint8)",
    "i8": "tensor(int8)",
    "i32": "tensor(int32)",
    "i64": "tensor(int64)",
    "boolean": "tensor(bool)",
}
NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # INFERENCE_PRECISION_HINT -> cxr's names


@dataclass(frozen=True)
class NodeInfo:
    """One graph input or output, like ``onnxruntime.NodeArg`` (dynamic dimensions are None)."""

    name: str
    shape: list[int | None]
    type: str


@dataclass(frozen=True)
class ModelMeta:
    """The ONNX file's ``metadata_props``, like ``onnxruntime.ModelMetadata.custom_metadata_map``."""

    custom_metadata_map: dict[str, str]


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Literal["fp32", "bf16", "int8"]
    note: str | None = None  # why "auto" chose it (None for an explicit request)


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when ``openvino`` cannot be imported."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return str(ov.__version__)


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as e:
        raise ProviderError(
            f"provider 'openvino' needs the openvino package, which cannot be imported here ({e})",
            hint=f"{INSTALL_HINT}, or use --provider cpu",
        ) from e
    return ov


def verified_record(
    props: Mapping[str, str], model_name: str, key: str = BF16_RECORD
) -> dict[str, Any] | None:
    """The model's ``key`` verification record (OpenVINO BF16, an INT8 one), or None when it has none."""
    raw = props.get(META_VERIFIED_PRECISIONS)
    if raw is None:
        return None
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProviderError(
            f"{model_name}: metadata {META_VERIFIED_PRECISIONS} is not valid JSON ({e})", hint=REFUSE_HINT
        ) from e
    record = records.get(key) if isinstance(records, dict) else None
    return record if isinstance(record, dict) else None


def record_verdict(
    record: Mapping[str, Any] | None, what: str = "BF16", key: str = BF16_RECORD
) -> tuple[bool, str]:
    """(accepted, why): whether a verification record (``agreement``, ``bar``, ``images``, ``accepted``,
    ``reason``; an INT8 one also ``sensitivity_change_points`` and ``sensitivity_bar``) lets ``what`` run."""
    if record is None:
        return False, f"the model's metadata has no {key!r} record in {META_VERIFIED_PRECISIONS}"
    agreement, images, bar = record.get("agreement"), record.get("images"), record.get("bar")
    measured = (
        f"top-1 agreement {agreement:.4f} with FP32 on {images} images, bar {bar}"
        if isinstance(agreement, int | float) and isinstance(bar, int | float)
        else "no agreement figures recorded"
    )
    moved, limit = record.get("sensitivity_change_points"), record.get("sensitivity_bar")
    worst = None
    if isinstance(moved, Mapping) and isinstance(limit, int | float):
        worst = max((abs(v) for v in moved.values() if isinstance(v, int | float)), default=0.0)
        measured += f"; sensitivity moved at most {worst:.2f} points, bar {limit}"
    reason = str(record.get("reason") or "").strip()
    if record.get("accepted") is not True:
        return False, f"the model's {what} check refused it: {reason or 'no reason recorded'} ({measured})"
    if isinstance(agreement, int | float) and isinstance(bar, int | float) and agreement < bar:
        return (
            False,
            f"the model's {what} record says accepted but its agreement is under its bar ({measured})",
        )
    if worst is not None and isinstance(limit, int | float) and worst > limit:
        return (
            False,
            f"the model's {what} record says accepted but a sensitivity moved over its bar ({measured})",
        )
    return True, f"the model's {what} check accepted it ({measured})"


def choose_precision(
    requested: str,
    *,
    cpu_bf16: bool | None,
    props: Mapping[str, str],
    model_name: str,
    int8: tuple[bool, str] | None = None,
    backend: str = "openvino",
) -> PrecisionChoice:
    """``requested`` as ``SessionConfig`` checked it: fp32 as asked; int8 only with an accepting ``int8``
    verdict (``cxr.precision.int8_verdict``: this backend, this CPU kind, the checked file; None: the model
    has no INT8 variant); bf16 only with CPU support and an accepting record (``cpu_bf16`` None: the backend
    runs no BF16, onnxruntime); else ProviderError. auto: the fastest allowed (int8 > bf16 > fp32), with a
    note saying which and why (none when INT8 was no question and the backend has no BF16)."""
    if requested == "fp32":
        return PrecisionChoice("fp32")
    not_int8 = f"not int8 ({int8[1]}); " if int8 is not None else ""

    def note(runs: str, why: str) -> str:
        return f"{backend} precision auto -> {runs} for {model_name}: {why}"

    if int8 is not None and int8[0] and requested in ("auto", "int8"):
        return PrecisionChoice("int8", note("int8", int8[1]) if requested == "auto" else None)
    if requested == "int8":
        why = int8[1] if int8 is not None else "it has no INT8 variant (no INT8 record, no INT8 file)"
        raise ProviderError(f"refusing to run {model_name} in int8: {why}", hint=INT8_HINT)
    if cpu_bf16 is None:
        return PrecisionChoice(
            "fp32", None if int8 is None else note("fp32", not_int8 + "runs the FP32 file")
        )
    accepted, why = record_verdict(verified_record(props, model_name))
    cpu_why = "this CPU has no BF16 support (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)"
    if requested == "bf16":
        if not cpu_bf16:
            raise ProviderError(
                f"cannot run {model_name} in bf16: {cpu_why}", hint="use --precision fp32 or auto"
            )
        if not accepted:
            raise ProviderError(f"refusing to run {model_name} in bf16: {why}", hint=REFUSE_HINT)
        return PrecisionChoice("bf16")
    if cpu_bf16 and accepted:
        return PrecisionChoice("bf16", note("bf16", not_int8 + why))
    return PrecisionChoice("fp32", note("fp32", not_int8 + (cpu_why if not cpu_bf16 else why)))


def graph_name(names: Iterable[str]) -> str:
    """The ONNX graph's own name among a port's tensor names: OpenVINO merges the names of tensors it folds
    into one port (``meta/probabilities`` and ``probabilities`` after an Identity), and ``get_any_name``
    picks any; the unprefixed (no ``/``), then shortest, name is the one the graph declares."""
    return min(names, key=lambda n: ("/" in n, len(n), n))


def _node(port: Any) -> NodeInfo:
    ps = port.get_partial_shape()
    shape = [] if ps.rank.is_dynamic else [d.get_length() if d.is_static else None for d in ps]
    kind = port.get_element_type().get_type_name()
    return NodeInfo(graph_name(port.get_names()), shape, ORT_TYPES.get(kind, f"tensor({kind})"))


def framework_props(model: Any) -> dict[str, str]:
    """The ONNX ``metadata_props``: OpenVINO's ONNX reader keeps them in the model's rt_info "framework"."""
    if not model.has_rt_info(["framework"]):
        return {}
    section = model.get_rt_info(["framework"])
    items = section.astype(dict) if hasattr(section, "astype") else dict(section)
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in items.items()}


class OpenVinoSession:
    """A compiled OpenVINO model behind the part of ``onnxruntime.InferenceSession`` cxr calls.

    ``run`` is thread-safe like onnxruntime's: each call borrows an infer request from a pool (one is made
    when all are busy), so concurrent clients (cxr-bench's concurrency, the API) never share one.
    """

    def __init__(
        self,
        compiled: Any,
        metadata: Mapping[str, str],
        *,
        device: str,
        precision: str,
        note: str | None = None,
    ) -> None:
        self._compiled = compiled
        self._inputs = [_node(p) for p in compiled.inputs]
        self._outputs = [_node(p) for p in compiled.outputs]
        self._out_index = {n: i for i, p in enumerate(compiled.outputs) for n in p.get_names()}
        self._meta = ModelMeta(dict(metadata))
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.device = device
        self.precision = precision
        self.note = note  # why this precision runs (auto's choice), None when it was asked for

    def get_inputs(self) -> list[NodeInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeInfo]:
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def get_providers(self) -> list[str]:
        return ["openvino"]

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = {i.name: i for i in self._inputs}
        if set(feeds) != set(expected):
            raise ModelError(
                f"feeds {sorted(feeds)} do not match the model's inputs {sorted(expected)}",
                hint="feed exactly the graph's inputs, by name",
            )
        for name, array in feeds.items():
            want = NUMPY_TYPES.get(expected[name].type)
            if want is not None and np.asarray(array).dtype != want:
                raise ModelError(
                    f"input {name!r} is {np.asarray(array).dtype}, the model expects {expected[name].type}",
                    hint=f"convert it with .astype(np.{np.dtype(want).name})",
                )

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, np.ndarray],
        run_options: Any = None,
    ) -> list[np.ndarray]:
        """The named outputs (all, in graph order, when None) as numpy arrays, like onnxruntime."""
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        unknown = [n for n in names if n not in self._out_index]
        if unknown:
            raise ModelError(
                f"unknown outputs {unknown}; the model has {[o.name for o in self._outputs]}",
                hint="ask for outputs by their graph names",
            )
        self._check_feeds(input_feed)
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(input_feed)).to_tuple()  # copies: the request is reused
        finally:
            self._idle.put(request)
        return [np.asarray(results[self._out_index[n]]) for n in names]


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO can run BF16 natively on this CPU (AVX512-BF16 or AMX: BF16 in its capabilities)."""
    return "BF16" in [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]


def open_openvino(
    model: Path,
    *,
    threads: int | None,
    precision: str,
    strict: bool,
    int8: tuple[bool, str] | None = None,
    name: str | None = None,
) -> tuple[OpenVinoSession, tuple[str, ...]]:
    """Read ``model`` with OpenVINO, choose its precision (``choose_precision``; ``int8``: the INT8 verdict,
    and ``model`` then the INT8 file; ``name``: the model asked for, in notes), compile it for the CPU and
    check what it got: the session (its ``precision`` and ``device`` are what really runs) and the warnings.
    An INT8 file runs its float ops in FP32, where its check was made (BF16 CPUs would otherwise use BF16)."""
    ov = import_openvino()
    core = ov.Core()
    try:
        graph = core.read_model(str(model))
    except Exception as e:  # OpenVINO raises untyped RuntimeErrors for graphs its ONNX reader cannot take
        raise ModelError(
            f"OpenVINO {ov.__version__} cannot read {model}: {first_line(e, 300)}",
            hint="use --provider cpu (onnxruntime), or upgrade openvino",
            path=model,
        ) from e
    props = framework_props(graph)
    name = name or model.name
    choice = choose_precision(precision, cpu_bf16=cpu_has_bf16(core), props=props, model_name=name, int8=int8)
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",  # one synchronous request per batch: all threads on it
        "INFERENCE_PRECISION_HINT": "bf16" if choice.precision == "bf16" else "f32",
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(graph, DEVICE, config)
    except Exception as e:  # as above: unsupported ops or shapes surface here
        raise ModelError(
            f"OpenVINO {ov.__version__} cannot compile {model.name} for the {DEVICE}: {first_line(e, 300)}",
            hint="use --provider cpu (onnxruntime), or upgrade openvino",
            path=model,
        ) from e
    hint_type = compiled.get_property("INFERENCE_PRECISION_HINT")
    got = OV_PRECISIONS.get(hint_type.get_type_name(), hint_type.get_type_name())
    if choice.precision == "int8" and got == "fp32":
        got = "int8"  # the quantized ops in INT8, the rest in FP32
    device = ",".join(str(d) for d in compiled.get_property("EXECUTION_DEVICES")) or DEVICE
    warnings = [choice.note] if choice.note else []
    if choice.note:
        log.info("%s", choice.note)
    if got != choice.precision:
        msg = f"asked OpenVINO for {choice.precision} but the compiled {model.name} runs {got}"
        if strict:
            raise ProviderError(msg, hint="use --precision fp32, or drop --strict-provider")
        warnings.append(msg)
        log.warning("%s", msg)
    session = OpenVinoSession(compiled, props, device=device, precision=got, note=choice.note)
    return session, tuple(warnings)
