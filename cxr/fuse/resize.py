"""Pillow's antialiased bilinear resize of 8-bit images, bit for bit, as matrix products in an ONNX graph.

Takes: an input and an output size. Makes: Pillow's fixed-point resampling matrices, the ONNX nodes that
apply them in float64 (exact; ONNX ``Resize`` is off by up to one grey level), ``probe_order`` (which pass
the installed Pillow runs first) and the numpy twins ``resize_like_graph`` and ``member_input``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from cxr.imaging.preprocess import normalize
from cxr.spec import PreprocessSpec

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (Resample.c)


@lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] matrix of Pillow's fixed-point bilinear weights, divided by 2**22 (read-only)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        t = np.abs((np.arange(xmax) + xmin - center + 0.5) * ss)
        k = np.where(t < 1.0, 1.0 - t, 0.0)
        total = k.sum()
        if total != 0.0:
            k /= total
        one = float(1 << PRECISION_BITS)
        fixed = np.where(k >= 0, np.floor(k * one + 0.5), np.ceil(k * one - 0.5))  # round half away from 0
        w[xx, xmin : xmin + xmax] = fixed / one
    w.setflags(write=False)
    return w


def _round_clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0.0, 255.0)


def _passes(
    in_hw: tuple[int, int], out_hw: tuple[int, int], order: str
) -> list[tuple[str, np.ndarray, bool]]:
    """(axis, matrix, multiply from the left) for each pass needed, in ``order`` ("hv" or "vh")."""
    passes = {}
    if in_hw[1] != out_hw[1]:
        passes["h"] = ("w", pil_coefficients(in_hw[1], out_hw[1]).T, False)
    if in_hw[0] != out_hw[0]:
        passes["v"] = ("h", pil_coefficients(in_hw[0], out_hw[0]), True)
    return [passes[p] for p in order if p in passes]


def resize_like_graph(batch: np.ndarray, out_hw: tuple[int, int], order: str = "hv") -> np.ndarray:
    """numpy twin of the graph: [N, 1, H, W] uint8 or float (0..255 integers) -> float32 [N, 1, h, w]."""
    x = np.asarray(batch, dtype=np.float64)
    in_hw = (int(x.shape[-2]), int(x.shape[-1]))
    for _, mat, left in _passes(in_hw, out_hw, order):
        x = _round_clip(mat @ x if left else x @ mat)
    return x.astype(np.float32)


def member_input(
    gray: np.ndarray,
    member_hw: tuple[int, int],
    order: str,
    preprocess: PreprocessSpec,
    input_type: str = "tensor(float)",
) -> np.ndarray:
    """What the fused graph feeds one member: [N, 1, H, W] grey levels at the fused size -> the member's
    input, resized to ``member_hw`` like the graph (skipped at the same size), normalised with the member's
    ``preprocess``, FP16 when its session's input is ``tensor(float16)``."""
    g = gray if tuple(gray.shape[-2:]) == tuple(member_hw) else resize_like_graph(gray, member_hw, order)
    x = normalize(np.asarray(g, dtype=np.float32), preprocess)
    return x.astype(np.float16) if input_type == "tensor(float16)" else x


def probe_order(in_hw: tuple[int, int], out_hw: tuple[int, int], *, seed: int = 0) -> tuple[str, int]:
    """("hv" | "vh", pixels that still differ from Pillow) for resizing ``in_hw`` to ``out_hw``."""
    from cxr.imaging.preprocess import resize_gray

    rng = np.random.default_rng(seed)
    probes = rng.integers(0, 256, size=(2, *in_hw), dtype=np.uint8)
    spec = PreprocessSpec(input_size=out_hw)
    ref = np.stack([resize_gray(p, spec) for p in probes])[:, None].astype(np.float32)
    misses = {o: int(np.sum(resize_like_graph(probes[:, None], out_hw, o) != ref)) for o in ("hv", "vh")}
    best = min(misses, key=lambda o: (misses[o], o != "hv"))
    return best, misses[best]


def resize_nodes(
    src: str, dst: str, in_hw: tuple[int, int], out_hw: tuple[int, int], prefix: str, order: str = "hv"
) -> tuple[list[NodeProto], list[TensorProto]]:
    """Nodes (and initializers) resizing float32 ``src`` [N, 1, H, W] (0..255) to float32 ``dst`` [N, 1, h, w]."""
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    cur = f"{prefix}as_f64"
    nodes.append(helper.make_node("Cast", [src], [cur], to=TensorProto.DOUBLE, name=f"{prefix}cast_f64"))
    half = f"{prefix}half"
    lo, hi = f"{prefix}zero", f"{prefix}max255"
    inits += [
        numpy_helper.from_array(np.array(0.5, dtype=np.float64), half),
        numpy_helper.from_array(np.array(0.0, dtype=np.float64), lo),
        numpy_helper.from_array(np.array(255.0, dtype=np.float64), hi),
    ]
    for axis, mat, left in _passes(in_hw, out_hw, order):
        name, t = f"{prefix}coef_{axis}", f"{prefix}{{}}_{axis}"  # t.format(step): this pass's tensor names
        inits.append(numpy_helper.from_array(np.ascontiguousarray(mat), name))
        nodes += [
            helper.make_node(
                "MatMul", [name, cur] if left else [cur, name], [t.format("mm")], name=t.format("matmul")
            ),
            helper.make_node("Add", [t.format("mm"), half], [t.format("add")], name=t.format("add")),
            helper.make_node("Floor", [t.format("add")], [t.format("floor")], name=t.format("floor")),
            helper.make_node("Clip", [t.format("floor"), lo, hi], [t.format("clip")], name=t.format("clip")),
        ]
        cur = t.format("clip")
    nodes.append(helper.make_node("Cast", [cur], [dst], to=TensorProto.FLOAT, name=f"{prefix}cast_f32"))
    return nodes, inits
