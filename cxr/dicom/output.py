"""DICOM results as `cxr-predict` and `cxr listen` make them: predict, draw the overlay, build SR and SC.

Takes: a ``Predictor`` and DICOM inputs (one instance's bytes, or the images a scan predicts, through the
predictor's image sink). Makes: the SR and the Secondary Capture of every predicted DICOM image (the picture
is ``cxr.runtime.overlay.render_overlay``: the radiograph at its own aspect ratio, the heatmap when the model
has one, the result and the notice burned in), written into a folder by ``DicomWriter`` or returned by
``dicom_outputs``. Inputs that are not DICOM get none, and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr.dicom._identity import ModelIdentity
from cxr.dicom.results import DicomResults, dicom_results, write_dicom_results
from cxr.errors import CxrError
from cxr.imaging.dicom import might_be_dicom
from cxr.runtime.overlay import render_overlay
from cxr.spec import Prediction

if TYPE_CHECKING:
    from cxr.runtime.predictor import Predictor


def build_results(
    data: bytes, pred: Prediction, image: np.ndarray, heat: np.ndarray | None, model: ModelIdentity
) -> DicomResults:
    """The SR and SC of one predicted DICOM image (``image``: decoded at its own size)."""
    rgb = np.asarray(render_overlay(image, pred, heat).convert("RGB"))
    return dicom_results(data, pred, rgb, model)


def dicom_outputs(
    predictor: Predictor, data: bytes, name: str, model: ModelIdentity | None = None
) -> tuple[Prediction, DicomResults | None]:
    """Predict one DICOM instance and build its results (None when it could not be predicted; the
    prediction then carries the error). Raises what ``dicom_results`` raises for a source it cannot
    answer (no UIDs, not an image)."""
    one = predictor.explain(data, name)
    if not one.prediction.ok or one.image is None:
        return one.prediction, None
    identity = model or ModelIdentity.from_predictor(predictor)
    return one.prediction, build_results(data, one.prediction, one.image, one.heatmap, identity)


@dataclass
class DicomWriter:
    """A ``PredictorConfig.heatmap_sink`` that writes the SR and SC of every predicted DICOM image into
    ``folder``. ``written`` maps each source to its (SR, SC) files, ``not_dicom`` counts inputs that are not
    DICOM (they get none), ``failed`` says why a DICOM image got none; nothing here stops a scan."""

    folder: Path
    model: ModelIdentity
    written: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    not_dicom: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __call__(self, pred: Prediction, image: np.ndarray, heat: np.ndarray | None) -> None:
        path = Path(pred.source)
        try:
            data = path.read_bytes()
        except OSError as e:
            self.failed[pred.source] = f"cannot read {path} again: {e.strerror or e}"
            return
        if not might_be_dicom(data[:256]):
            self.not_dicom.append(pred.source)
            return
        try:
            self.written[pred.source] = write_dicom_results(
                build_results(data, pred, image, heat, self.model), self.folder
            )
        except CxrError as e:
            self.failed[pred.source] = e.one_line
