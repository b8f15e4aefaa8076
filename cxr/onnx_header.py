"""Takes an ONNX path; makes its metadata, graph inputs and external-data files, read without onnx or the
weights."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cxr.errors import ModelError

# Field numbers (onnx.proto3): ModelProto.graph=7, .metadata_props=14; StringStringEntryProto key=1, value=2;
# GraphProto.initializer=5, .input=11; TensorProto.name=8, .external_data=13; ValueInfoProto name=1, type=2;
# TypeProto.tensor_type=1; Tensor elem_type=1, shape=2; TensorShapeProto.dim=1; Dimension value=1, param=2.
ELEM_TYPES = {1: "float", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "double"}


@dataclass(frozen=True)
class InputInfo:
    name: str
    elem_type: str
    shape: tuple[int | str | None, ...]  # int: fixed; str: symbolic (dynamic); None: unknown


@dataclass(frozen=True)
class OnnxHeader:
    metadata: dict[str, str]
    inputs: tuple[InputInfo, ...]
    external_data: tuple[str, ...] = ()  # relative locations of the weights' external-data files, in order


class _WireError(Exception):
    pass


def _varint(f: BinaryIO) -> int | None:
    """A base-128 varint, or None at a clean end of stream."""
    result = shift = 0
    for i in range(10):
        b = f.read(1)
        if not b:
            if i == 0:
                return None
            raise _WireError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    raise _WireError("varint longer than 10 bytes")


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (field number, wire type, value) up to ``end``; for length-delimited fields the value is
    the payload length and the stream is positioned at the payload (skipped after the consumer)."""
    while f.tell() < end:
        key = _varint(f)
        if key is None:
            return
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = _varint(f)
            if value is None:
                raise _WireError("truncated field")
            yield number, wire, value
        elif wire == 1:
            f.seek(8, io.SEEK_CUR)
        elif wire == 5:
            f.seek(4, io.SEEK_CUR)
        elif wire == 2:
            n = _varint(f)
            if n is None:
                raise _WireError("truncated length")
            start = f.tell()
            if start + n > end:
                raise _WireError("field runs past the end of its message")
            yield number, wire, n
            f.seek(start + n)
        else:
            raise _WireError(f"unsupported wire type {wire}")


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _WireError("truncated payload")
    return data


def _sub(data: bytes) -> tuple[BinaryIO, int]:
    return io.BytesIO(data), len(data)


def _string_entry(data: bytes) -> tuple[str, str]:
    key = value = ""
    f, end = _sub(data)
    for number, wire, n in _fields(f, end):
        if wire == 2 and number in (1, 2):
            text = _read(f, n).decode("utf-8", errors="replace")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def _dimension(data: bytes) -> int | str | None:
    f, end = _sub(data)
    for number, wire, n in _fields(f, end):
        if number == 1 and wire == 0:
            return n
        if number == 2 and wire == 2:
            return _read(f, n).decode("utf-8", errors="replace")
    return None


def _value_info(data: bytes) -> InputInfo:
    name, elem, shape = "", "unknown", []
    f, end = _sub(data)
    for number, wire, n in _fields(f, end):
        if number == 1 and wire == 2:
            name = _read(f, n).decode("utf-8", errors="replace")
        elif number == 2 and wire == 2:
            tf, tend = _sub(_read(f, n))
            for tn, tw, tl in _fields(tf, tend):
                if tn != 1 or tw != 2:
                    continue
                sf, send = _sub(_read(tf, tl))
                for sn, sw, sl in _fields(sf, send):
                    if sn == 1 and sw == 0:
                        elem = ELEM_TYPES.get(sl, f"type{sl}")
                    elif sn == 2 and sw == 2:
                        df, dend = _sub(_read(sf, sl))
                        shape = [
                            _dimension(_read(df, dl))
                            for dn, dw, dl in _fields(df, dend)
                            if dn == 1 and dw == 2
                        ]
    return InputInfo(name, elem, tuple(shape))


def _tensor(f: BinaryIO, end: int) -> tuple[str, str | None]:
    """(name, external-data location or None) of a TensorProto, its raw data skipped."""
    name, location = "", None
    for number, wire, n in _fields(f, end):
        if number == 8 and wire == 2:
            name = _read(f, n).decode("utf-8", errors="replace")
        elif number == 13 and wire == 2:
            key, value = _string_entry(_read(f, n))
            location = value if key == "location" else location
    return name, location


def _graph(f: BinaryIO, end: int) -> tuple[tuple[InputInfo, ...], tuple[str, ...]]:
    """(real graph inputs, external-data locations of the initializers)."""
    inputs: list[InputInfo] = []
    initializers: set[str] = set()
    locations: list[str] = []
    for number, wire, n in _fields(f, end):
        if wire != 2:
            continue
        if number == 11:
            inputs.append(_value_info(_read(f, n)))
        elif number == 5:
            name, location = _tensor(f, f.tell() + n)
            initializers.add(name)
            if location is not None and location not in locations:
                locations.append(location)
    # graphs from IR < 4 list initializers among the inputs: those are weights, not inputs
    return tuple(i for i in inputs if i.name not in initializers), tuple(locations)


def read_onnx_header(path: Path | str) -> OnnxHeader:
    """Metadata and real graph inputs of ``path``; ``ModelError`` when it is not a readable ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", hint="check the path", path=path)
    metadata: dict[str, str] = {}
    inputs: tuple[InputInfo, ...] = ()
    external: tuple[str, ...] = ()
    seen_graph = False
    try:
        with path.open("rb") as f:
            end = f.seek(0, io.SEEK_END)
            f.seek(0)
            for number, wire, n in _fields(f, end):
                if number == 7 and wire == 2:
                    inputs, external = _graph(f, f.tell() + n)
                    seen_graph = True
                elif number == 14 and wire == 2:
                    k, v = _string_entry(_read(f, n))
                    metadata[k] = v
    except (_WireError, OSError, ValueError) as e:
        raise ModelError(
            f"{path} is not a readable ONNX file ({e})", hint="pass a .onnx file written by cxr", path=path
        ) from e
    if not seen_graph:
        raise ModelError(f"{path} is not an ONNX model (no graph found)", hint="pass a .onnx file", path=path)
    return OnnxHeader(metadata, inputs, external)
