"""ONNX files on disk: size, saving with external data, moving into place, and the hash that names a file.

Takes: an ``onnx.ModelProto`` or a path. Makes: ``<name>.onnx`` (with ``<name>.onnx.data`` beside it when
the weights are large), its approximate size and its SHA-256; ``move_into_place`` moves a staged file and
its data file to their final name. Torch-free: export (PyTorch members) and fusion (ONNX only) save through
the same function.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from cxr.session import files_sha256


def model_nbytes(proto: onnx.ModelProto) -> int:
    """Approximate serialized size: initializer bytes (the weights dominate every CNN)."""
    from cxr.export.flops import _tensor_bytes

    total = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += _tensor_bytes(a.t)
    return total


def save_onnx(proto: onnx.ModelProto, path: Path, threshold: int) -> bool:
    """Write ``proto`` to ``path``; weights go to ``<name>.data`` when they exceed ``threshold`` bytes.

    Returns whether external data was used. Saving with external data moves the weights out of ``proto``,
    so pass a copy if you still need the weights in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    if data.exists():
        data.unlink()
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
    if data_dst.exists():
        data_dst.unlink()
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
    """SHA-256 of the .onnx file, followed by its external data file when it has one.

    Without external data (every paper member) this equals ``sha256sum model.onnx``.
    """
    return files_sha256(p for p in (path, external_data_path(path)) if p.exists())
