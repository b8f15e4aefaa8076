"""Training-time (torchvision) and run-time (numpy + Pillow) preprocessing give the same tensors.

The run-time path is ``cxr.imaging``; the training path is ``cxr.train.dataset.eval_transform`` on the
same decoded image. Both are checked on synthetic images of every awkward mode and on the real sample.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.imaging.decode import decode_gray
from cxr.imaging.preprocess import to_model_input
from cxr.spec import PreprocessSpec

torch = pytest.importorskip("torch")
transforms_mod = pytest.importorskip("cxr.train.dataset")


def _torch_eval(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    img = Image.fromarray(gray, mode="L").convert("RGB")
    return transforms_mod.eval_transform(spec)(img).numpy()


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _synthetic(kind: str, rng: np.random.Generator) -> bytes:
    h, w = 57, 83
    if kind == "L":
        return _png_bytes(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
    if kind == "I;16":
        arr = rng.integers(200, 4000, (h, w), dtype=np.uint16)  # 12-bit data in a 16-bit PNG
        return _png_bytes(Image.fromarray(arr))
    if kind == "RGBA":
        return _png_bytes(Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA"))
    if kind == "RGB":
        return _png_bytes(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"), "BMP")
    if kind == "P":
        return _png_bytes(
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert("P")
        )
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["L", "I;16", "RGBA", "RGB", "P"])
@pytest.mark.parametrize("size", [(224, 224), (64, 48)])
def test_parity_on_synthetic_images(kind: str, size: tuple[int, int]) -> None:
    spec = PreprocessSpec(input_size=size)
    gray = decode_gray(_synthetic(kind, np.random.default_rng(len(kind))))
    ours = to_model_input([gray], spec, normalized=True)[0]
    theirs = _torch_eval(gray, spec)
    assert ours.shape == theirs.shape == (3, *size)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.full((10, 10), 1000, dtype=np.uint16)
    arr[0, 0], arr[-1, -1] = 500, 3000
    gray = decode_gray(_png_bytes(Image.fromarray(arr)))
    assert gray[0, 0] == 0 and gray[-1, -1] == 255
    assert gray[5, 5] == round((1000 - 500) * 255 / 2500)


@pytest.mark.real_data
def test_parity_on_real_radiographs(shared_data: Path) -> None:
    files = sorted((shared_data / "radiography-dev").rglob("*.png"))[:12]
    files += sorted((shared_data / "external-dev").iterdir())[:4]
    assert files
    spec = PreprocessSpec(input_size=(224, 224))
    for f in files:
        gray = decode_gray(f)
        diff = np.abs(to_model_input([gray], spec, normalized=True)[0] - _torch_eval(gray, spec)).max()
        assert diff <= 1e-5, f"{f.name}: {diff}"
