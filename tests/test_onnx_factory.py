"""The test models themselves behave like cxr models (so tests built on them mean something)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxr.spec import ModelMetadata


def test_fused_model_outputs_are_consistent(fused_model: Path) -> None:
    sess = ort.InferenceSession(str(fused_model), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert meta.input_format == "uint8_gray"
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8)
    probs, label, members = sess.run(None, {"image": x})
    assert probs.shape == (3, 4) and members.shape == (3, 2, 4) and label.shape == (3,)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(members.mean(1), probs, atol=1e-6)
    np.testing.assert_array_equal(label, probs.argmax(1))
    assert len({tuple(np.round(p, 4)) for p in probs}) == 3  # different images, different outputs
