"""The overlay PNG for ``/v1/predict?heatmap=true``: one run of the heatmap graph on the image the model saw.

Takes: the server's heatmap ``Predictor`` (``<stem>.heatmaps.onnx``), the resized uint8 gray image and the
request's ``Prediction`` (from the plain graph, with the gate's reasons). Makes: PNG bytes
(``cxr.runtime.overlay.overlay_png``). Run in the decode pool: it is CPU work, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cxr.errors import CxrError
from cxr.runtime.overlay import overlay_png
from cxr.runtime.types import Prediction

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor


def overlay_for(predictor: Predictor, gray: np.ndarray, pred: Prediction) -> bytes:
    """The overlay of ``gray`` for ``pred`` (the heatmap of the class ``pred`` names)."""
    raw = predictor.run(predictor.prepare([gray]), heatmaps=True)
    if raw.heatmaps is None:
        raise CxrError(
            f"{predictor.model_path} returned no heatmap", hint="rebuild it with `cxr fuse --heatmaps`"
        )
    return overlay_png(gray, raw.heatmaps[0], pred)
