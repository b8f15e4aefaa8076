"""Takes the heatmap ``Predictor``, the upload and its ``Prediction``; makes the overlay PNG."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cxr.errors import CxrError
from cxr.runtime.overlay import overlay_png
from cxr.spec import Prediction

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor


def overlay_for(predictor: Predictor, image: np.ndarray, pred: Prediction) -> bytes:
    """The overlay of ``image`` for ``pred`` (the heatmap of the class ``pred`` names)."""
    raw = predictor.run(predictor.prepare([image]), heatmaps=True)
    if raw.heatmaps is None:
        raise CxrError(
            f"{predictor.model_path} returned no heatmap", hint="rebuild it with `cxr fuse --heatmaps`"
        )
    return overlay_png(image, pred, raw.heatmaps[0])
