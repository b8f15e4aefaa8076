"""A small, independent reader for Triton's config.pbtxt (protobuf text format), and its own tests.

The Triton export tests parse the generated config back with this reader instead of trusting the
writer; it knows nothing of cxr. Every field is returned as a list (protobuf fields may repeat).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

_TOKEN = re.compile(
    r"\s*(?:(?P<comment>#[^\n]*)|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<punct>[\[\]{}:,])"
    r"|(?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_]))|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*))"
)


def tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot tokenize config at {text[pos : pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "comment" or kind is None:
            continue
        val = m.group(kind)
        if kind == "str":
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        elif kind == "num":
            val = float(val) if "." in val else int(val)
        tokens.append((kind, val))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ValueError(f"expected {value!r}, got {tok!r} at token {self.i}")
        self.i += 1
        return tok

    def message(self, end: str | None) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        while (tok := self.peek()) is not None and not (tok[0] == "punct" and tok[1] == end):
            kind, key = self.take()
            if kind != "ident":
                raise ValueError(f"expected a field name, got {key!r}")
            if self.peek() == ("punct", ":"):
                self.take(":")
            out.setdefault(key, []).extend(self.value())
        if end is not None:
            self.take(end)
        return out

    def value(self) -> list[Any]:
        kind, val = self.take()
        if (kind, val) == ("punct", "{"):
            return [self.message("}")]
        if (kind, val) == ("punct", "["):
            items: list[Any] = []
            while self.peek() != ("punct", "]"):
                items.extend(self.value())
                if self.peek() == ("punct", ","):
                    self.take(",")
            self.take("]")
            return items
        if kind == "punct":
            raise ValueError(f"unexpected {val!r}")
        return [val]


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into nested dicts of lists (scalars: int, float, str; enums as str)."""
    return _Parser(text).message(None)


def one(msg: dict[str, list[Any]], key: str) -> Any:
    """The single value of a non-repeated field (fails when absent or repeated)."""
    vals = msg.get(key, [])
    if len(vals) != 1:
        raise KeyError(f"{key}: expected one value, found {vals!r}")
    return vals[0]


def params(msg: dict[str, list[Any]]) -> dict[str, Any]:
    """``parameters { key: .. value: .. }`` entries as a dict (string_value unwrapped)."""
    out = {}
    for p in msg.get("parameters", []):
        v = one(p, "value")
        out[one(p, "key")] = one(v, "string_value") if isinstance(v, dict) else v
    return out


TRITON_DOC_SAMPLE = """
# from Triton's model_configuration.md, with the ONNX Runtime backend's TensorRT section
platform: "tensorrt_plan"
max_batch_size: 8
input [
  { name: "input0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "input1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [ { name: "output0" data_type: TYPE_FP32 dims: [ -1, 16 ] reshape: { shape: [ ] } } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
  } ]
}}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def test_parses_triton_doc_sample() -> None:
    cfg = parse_pbtxt(TRITON_DOC_SAMPLE)
    assert one(cfg, "platform") == "tensorrt_plan"
    assert one(cfg, "max_batch_size") == 8
    assert [one(t, "name") for t in cfg["input"]] == ["input0", "input1"]
    out = one(cfg, "output")
    assert out["dims"] == [-1, 16] and one(out, "reshape") == {"shape": []}
    assert one(one(cfg, "instance_group"), "kind") == "KIND_CPU"
    acc = one(one(one(cfg, "optimization"), "execution_accelerators"), "gpu_execution_accelerator")
    assert one(acc, "name") == "tensorrt" and params(acc) == {"precision_mode": "FP16"}
    assert params(cfg) == {"intra_op_thread_count": "2"}


@pytest.mark.parametrize("bad", ['name: "x" }', "input [ { name: 1 ", 'name: "unterminated'])
def test_rejects_malformed_text(bad: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_pbtxt(bad)


def test_unescapes_strings() -> None:
    assert one(parse_pbtxt(r'name: "a\"b\\c"'), "name") == 'a"b\\c'
