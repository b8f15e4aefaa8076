"""Helpers (no tests) for the cxr-bench tests: rewrite a tiny model's card, freeze its batch dimension, and
put ``benchmarks/`` on the path (its modules import each other by plain name, as its scripts do)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from cxr.session import file_sha256
from cxr.spec import META_CARD

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py`` (``benchmarks/`` goes on the path, as its scripts put it)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def with_card(src: Path, dst: Path, drop: tuple[str, ...] = (), **updates: Any) -> Path:
    """Copy ``src`` to ``dst`` with ``updates`` merged into (and ``drop`` removed from) its cxr card."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == META_CARD:
            card = json.loads(prop.value)
            card.update(updates)
            for k in drop:
                card.pop(k, None)
            prop.value = json.dumps(card, sort_keys=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def variant_of(fp32: Path, dst: Path, precision: str = "int8", **updates: Any) -> Path:
    """A stand-in for a converted variant: same graph, card says ``precision`` and the FP32 file's hash.
    The producer name changes so the file (and its hash) differs from the FP32 file."""
    out = with_card(fp32, dst, precision=precision, fp32_sha256=file_sha256(fp32), **updates)
    model = onnx.load(str(out))
    model.producer_name = f"variant-{precision}"
    onnx.save(model, str(out))
    return out


def fixed_batch(src: Path, dst: Path, batch: int) -> Path:
    """Copy ``src`` with its input's batch dimension fixed to ``batch``."""
    model = onnx.load(str(src))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch
    onnx.save(model, str(dst))
    return dst


def baked_reshape(src: Path, dst: Path) -> Path:
    """Copy a tiny member whose Reshape target is [1, -1]: its batch looks dynamic but only 1 runs."""
    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "flat_shape":
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape")
            )
    onnx.save(model, str(dst))
    return dst
