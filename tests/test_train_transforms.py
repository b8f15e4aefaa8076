"""Predictions for a member smaller than the ensemble go through the fused graph's two resizes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from cxr.fuse.resize import probe_order, resize_like_graph  # noqa: E402
from cxr.spec import PreprocessSpec  # noqa: E402
from cxr.train.dataset import eval_transform  # noqa: E402


@pytest.mark.parametrize(("original", "fused", "member"), [(256, 128, 64), (299, 48, 32), (100, 64, 64)])
def test_via_resize_equals_the_fused_graph_input(original: int, fused: int, member: int) -> None:
    rng = np.random.default_rng(original)
    gray = rng.integers(0, 256, size=(original, original), dtype=np.uint8)
    spec = PreprocessSpec(input_size=(member, member), mean=(0.5,) * 3, std=(0.5,) * 3)
    got = eval_transform(spec, via=(fused, fused))(Image.fromarray(gray, "L").convert("RGB")).numpy()
    at_fused = np.asarray(Image.fromarray(gray, "L").resize((fused, fused), Image.BILINEAR))
    order, _ = ("hv", 0) if fused == member else probe_order((fused, fused), (member, member))
    in_graph = (
        at_fused
        if fused == member
        else resize_like_graph(at_fused[None, None], (member, member), order)[0, 0]
    )
    expected = (np.asarray(in_graph, dtype=np.float32) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), atol=1e-6)
    direct = eval_transform(spec)(Image.fromarray(gray, "L").convert("RGB")).numpy()
    assert fused == member or np.abs(direct - got).max() > 1e-3  # the direct resize is not what ships
