"""The overlay PNG for ``/v1/predict?heatmap=true``: one run of the heatmap graph, drawn on the upload.

Takes: the server's heatmap ``Predictor`` (``<stem>.heatmaps.onnx``), the decoded uint8 gray image at its own
size and the request's ``Prediction`` (from the plain graph, with the gate's reasons). Makes: PNG bytes
(``cxr.runtime.overlay.overlay_png``) with the map of the class ``pred`` names. Run in the decode pool: it is
CPU work, off the event loop.
"""

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
