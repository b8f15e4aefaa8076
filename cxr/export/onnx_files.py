"""ONNX files on disk: saving with external data, moving into place, size, SHA-256, and cxr metadata.

Takes: an ``onnx.ModelProto`` or a path. Makes: ``<name>.onnx`` (``<name>.onnx.data`` beside it when the
weights are large), its size and hash, and its ``ModelMetadata`` (read without loading the weights).
Torch-free: export and fusion save through the same function.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from cxr.errors import ModelError, first_line
from cxr.session import files_sha256
from cxr.spec import ModelMetadata


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type (reading ``raw_data`` would copy it)."""
    if t.data_type == onnx.TensorProto.STRING:
        return int(t.ByteSize())
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    return n * itemsize


def model_nbytes(proto: onnx.ModelProto) -> int:
    """Approximate serialized size: initializer bytes (the weights dominate every CNN)."""
    total = sum(tensor_bytes(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        total += sum(tensor_bytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def save_onnx(proto: onnx.ModelProto, path: Path, threshold: int) -> bool:
    """Write ``proto``; weights go to ``<name>.data`` above ``threshold`` bytes (moved out of ``proto``).

    Returns whether external data was used.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    data.unlink(missing_ok=True)
    external = model_nbytes(proto) > threshold
    if external:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=256,
        )
    else:
        onnx.save_model(proto, str(path))
    return external


def move_into_place(staged: Path, out: Path) -> None:
    """Move a staged file (and its external data) to ``out``, removing a stale data file there."""
    data_src, data_dst = external_data_path(staged), external_data_path(out)
    data_dst.unlink(missing_ok=True)
    if data_src.exists():
        shutil.move(str(data_src), str(data_dst))
    staged.replace(out)


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def onnx_size_bytes(path: Path) -> int:
    """Bytes on disk: the .onnx file and its external data file when it has one."""
    data = external_data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def onnx_sha256(path: Path) -> str:
    """SHA-256 of the .onnx file, then its external data file if any (without: ``sha256sum model.onnx``)."""
    return files_sha256(p for p in (path, external_data_path(path)) if p.exists())


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
        raise ModelError(f"{path} is not a readable ONNX file: {first_line(e)}", path=path) from e
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, source=str(path))


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset of ``proto`` (0 when it imports none)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
