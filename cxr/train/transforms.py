"""Image transforms for training and evaluation, driven by a ``PreprocessSpec``.

Takes: a PIL RGB image made by ``load_rgb`` (``decode_gray`` -> ``Image.fromarray(gray, "L").convert("RGB")``).
Makes: a normalised float tensor [3, h, w]. The eval transform is torchvision ``Resize((h, w), BILINEAR)``
(Pillow's antialiased bilinear resize on PIL images) -> ``ToTensor`` -> ``Normalize(mean, std)``; it equals
the torch-free ``cxr.imaging.preprocess.to_model_input(..., normalized=True)`` that the runtime uses.
The train transform adds ``RandomRotation(10)`` in front (it draws from torch's RNG: the dataset forks
and seeds that RNG per image, see ``cxr.train.dataset``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision import transforms as T

from cxr.imaging.decode import decode_gray
from cxr.spec import PreprocessSpec

ROTATION_DEGREES = 10.0
BILINEAR = T.InterpolationMode.BILINEAR


def load_rgb(path: Path | str) -> Image.Image:
    """Decode any supported image the way the runtime does, as a 3-channel PIL image."""
    return Image.fromarray(decode_gray(path), "L").convert("RGB")


def _tail(spec: PreprocessSpec) -> list[object]:
    h, w = spec.input_size
    return [
        T.Resize((h, w), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ]


def eval_transform(spec: PreprocessSpec, via: tuple[int, int] | None = None) -> T.Compose:
    """Resize -> ToTensor -> Normalize: validation, test, prediction and export reference.

    ``via`` (h, w): resize to that size first, as the fused graph's runtime does before the graph resizes
    again for a member of a smaller input size (Pillow-exact in the graph, so the two agree bit for bit).
    """
    first = (
        [] if via is None or tuple(via) == spec.input_size else [T.Resize(tuple(via), interpolation=BILINEAR)]
    )
    return T.Compose([*first, *_tail(spec)])


def train_transform(spec: PreprocessSpec, degrees: float = ROTATION_DEGREES) -> T.Compose:
    """RandomRotation(degrees) -> Resize -> ToTensor -> Normalize (the study's augmentation)."""
    return T.Compose([T.RandomRotation(degrees, interpolation=T.InterpolationMode.NEAREST), *_tail(spec)])
