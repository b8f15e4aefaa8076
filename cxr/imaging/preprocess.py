"""Turn decoded grayscale images into model inputs exactly as training does, without torch.

Takes: uint8 [H, W] arrays and a ``PreprocessSpec``. Makes: uint8 [N, 1, h, w] (what a fused graph takes) or
normalised float32 [N, C, h, w] (what a member takes). The resize is Pillow's antialiased bilinear, as
torchvision's ``Resize`` on PIL images (``tests/test_imaging_preprocess_parity.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from cxr.spec import PreprocessSpec


def resize_gray(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize uint8 [H, W] to the spec's (h, w) with Pillow's antialiased bilinear filter."""
    h, w = spec.input_size
    if gray.shape == (h, w):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize(batch_u8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 [N, 1, h, w] -> float32 [N, C, h, w]: /255, replicate channels, (x - mean) / std."""
    x = batch_u8.astype(np.float32) / np.float32(255.0)
    x = np.repeat(x, spec.channels, axis=1) if x.shape[1] == 1 else x
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def to_model_input(grays: Sequence[np.ndarray], spec: PreprocessSpec, *, normalized: bool) -> np.ndarray:
    """Resize each image and stack: uint8 [N, 1, h, w], or normalised float32 [N, C, h, w]."""
    batch = np.stack([resize_gray(g, spec) for g in grays])[:, None, :, :]
    return normalize(batch, spec) if normalized else batch
