"""Takes a cxr ONNX file; makes its signature as Triton sees it (via onnxruntime) and its checked metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.errors import ModelError
from cxr.runtime.locate import check_model_file
from cxr.spec import OUTPUT_LOGITS, OUTPUT_PROBABILITIES, REEXPORT_HINT, ModelMetadata

ONNX_TO_TRITON: dict[str, str] = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}
"""onnxruntime's type strings -> Triton ``DataType`` names (the HTTP/gRPC datatype drops ``TYPE_``)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it."""

    name: str
    onnx_type: str  # onnxruntime's string, e.g. "tensor(uint8)"
    shape: tuple[int | str | None, ...]  # the full graph shape: ints, symbolic names or None
    data_type: str  # Triton's, e.g. "TYPE_UINT8"

    def dims(self, batched: bool) -> tuple[int, ...]:
        """Triton ``dims``: without the batch axis when batched; -1 for every variable dimension."""
        rest = self.shape[1:] if batched else self.shape
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in rest)

    def config_dims(self, batched: bool) -> tuple[int, ...]:
        """``dims`` as written in config.pbtxt: a [batch] tensor is written [1] with an empty reshape."""
        dims = self.dims(batched)
        return (1,) if batched and not dims else dims

    @property
    def wire_type(self) -> str:
        """The datatype on Triton's HTTP/gRPC wire (KServe v2 protocol), e.g. "UINT8"."""
        return self.data_type.removeprefix("TYPE_").replace("STRING", "BYTES")


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool  # every input and output has a variable first (batch) axis

    def to_dict(self) -> dict[str, Any]:
        def one(t: TensorSpec) -> dict[str, Any]:
            dims, model_dims = list(t.config_dims(self.batched)), list(t.dims(self.batched))
            return {
                "name": t.name,
                "onnx_type": t.onnx_type,
                "shape": list(t.shape),
                "data_type": t.data_type,
                "datatype": t.wire_type,
                "dims": dims,
                "reshape": model_dims if dims != model_dims else None,
            }

        return {
            "batched": self.batched,
            "inputs": [one(t) for t in self.inputs],
            "outputs": [one(t) for t in self.outputs],
        }


def open_session(path: Path) -> Any:
    """A one-thread, unoptimised CPU session on ``path``; ``ModelError`` when onnxruntime refuses it."""
    import onnxruntime as ort

    from cxr.session import cpu_session

    try:
        return cpu_session(path, 1, optimize=False)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad or unsupported graphs
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load {path}: {str(e).splitlines()[0][:300]}",
            hint="pass a cxr ONNX model (`cxr fuse RUN_DIR` writes one); if it has external-data files, "
            "keep them beside it",
            path=path,
        ) from e


def _tensor(arg: Any, path: Path) -> TensorSpec:
    if arg.type not in ONNX_TO_TRITON:
        raise ModelError(
            f"{path}: tensor {arg.name!r} has type {arg.type}, which Triton's ONNX Runtime backend cannot serve",
            hint="a cxr model's inputs and outputs are plain tensors; re-export it with cxr",
            path=path,
        )
    shape = arg.shape
    if shape is None:
        raise ModelError(f"{path}: tensor {arg.name!r} has no declared shape", hint=REEXPORT_HINT, path=path)
    dims = tuple(d if isinstance(d, int) or d is None else str(d) for d in shape)
    return TensorSpec(arg.name, arg.type, dims, ONNX_TO_TRITON[arg.type])


def signature_of(session: Any, path: Path) -> ModelSignature:
    """Inputs and outputs of an onnxruntime session; batched when all share a variable first axis."""
    inputs = tuple(_tensor(a, path) for a in session.get_inputs())
    outputs = tuple(_tensor(a, path) for a in session.get_outputs())
    # batched: every tensor's first axis is variable (symbolic, unknown or negative)
    batched = all(t.shape and not (isinstance(t.shape[0], int) and t.shape[0] >= 0) for t in inputs + outputs)
    return ModelSignature(inputs, outputs, batched)


def read_model(path: Path) -> tuple[ModelSignature, ModelMetadata, dict[str, str]]:
    """Open ``path`` and return its signature, its cxr metadata (refused without it) and the raw props."""
    path = check_model_file(Path(path))
    session = open_session(path)
    props = dict(session.get_modelmeta().custom_metadata_map)
    metadata = ModelMetadata.from_props(props, source=str(path))
    return signature_of(session, path), metadata, props


def check_contract(sig: ModelSignature, meta: ModelMetadata, path: Path) -> None:
    """The graph must be what its metadata says: one input of the right type and size, known outputs."""
    if len(sig.inputs) != 1:
        raise ModelError(f"{path} has {len(sig.inputs)} inputs; a cxr model has exactly one", path=path)
    inp = sig.inputs[0]
    want_type = "tensor(uint8)" if meta.input_format == "uint8_gray" else "tensor(float)"
    if inp.onnx_type != want_type:
        raise ModelError(
            f"{path}: metadata says input format {meta.input_format} ({want_type}) but the graph input "
            f"{inp.name!r} is {inp.onnx_type}",
            hint=REEXPORT_HINT,
            path=path,
        )
    channels = 1 if meta.input_format == "uint8_gray" else meta.preprocess.channels
    want = (channels, *meta.preprocess.input_size)
    got = inp.shape[1:]
    if len(got) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
        raise ModelError(
            f"{path}: graph input {inp.name!r} has shape {list(inp.shape)} but the metadata's "
            f"preprocessing gives [N, {want[0]}, {want[1]}, {want[2]}]",
            hint=REEXPORT_HINT,
            path=path,
        )
    names = [o.name for o in sig.outputs]
    if OUTPUT_PROBABILITIES not in names and OUTPUT_LOGITS not in names:
        raise ModelError(
            f"{path}: outputs {names} include neither {OUTPUT_PROBABILITIES!r} nor {OUTPUT_LOGITS!r}",
            hint=REEXPORT_HINT,
            path=path,
        )


def is_int8(meta: ModelMetadata) -> bool:
    return str(meta.card.get("precision", "fp32")).lower() == "int8"
