"""Takes an ONNX path, threads and a precision; makes an OpenVINO CPU session with onnxruntime's session
API."""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.cpu_kind import cap_allows_bf16, isa_cap
from cxr.errors import ModelError, ProviderError, first_line
from cxr.precision import BF16_RECORD as BF16_RECORD
from cxr.precision import PRECISION_NAMES as PRECISION_NAMES
from cxr.precision import PrecisionChoice as PrecisionChoice
from cxr.precision import choose_precision
from cxr.spec import META_VERIFIED_PRECISIONS as META_VERIFIED_PRECISIONS

log = logging.getLogger(__name__)

DEVICE = "CPU"
INSTALL_HINT = "pip install -e '.[openvino]' in a clone of cxr"
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
    """Whether OpenVINO can run BF16 natively on this CPU (AVX512-BF16 or AMX: BF16 in its capabilities) under
    this process's oneDNN ISA cap, if any."""
    return cap_allows_bf16(isa_cap()) and "BF16" in [
        str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    ]


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
