"""Synthetic chest radiographs: the embedded default data set (numpy and Pillow only).

The real COVID-19 Radiography Database cannot ship with the project, so the demo and the tests use
images drawn here instead. **They are SYNTHETIC: not real patients, not medical evidence.**

Each image is an 8-bit grayscale PNG of a posterior-anterior chest radiograph built from smooth
primitives (:mod:`.anatomy`): thorax soft tissue, two radiolucent lung fields, posterior and anterior
ribs, clavicles, spine, mediastinum, heart shadow, hila and diaphragm domes, with random positioning,
anatomy, exposure, noise and blur. Class findings (:mod:`.findings`) are drawn inside the lung fields,
large enough to survive a 32-64 px downsample and distinct in location, extent and texture:

* ``COVID``: bilateral, peripheral, lower-zone ground-glass opacities;
* ``Lung_Opacity``: a dense lobar consolidation of one lung;
* ``Viral Pneumonia``: bilateral, diffuse perihilar interstitial streaks;
* ``Normal``: clear lungs.
"""

from __future__ import annotations

from cxr.data.synthetic.dataset import (
    DATASET_DIRNAME,
    MARKER_FILE,
    SynthConfig,
    SynthResult,
    plan_counts,
    synthesize,
)
from cxr.data.synthetic.findings import FINDING_ZONES
from cxr.data.synthetic.render import MIN_SIZE, SynthError, render_xray
from cxr.data.synthetic.sheet import contact_sheet

__all__ = [
    "DATASET_DIRNAME",
    "FINDING_ZONES",
    "MARKER_FILE",
    "MIN_SIZE",
    "SynthConfig",
    "SynthError",
    "SynthResult",
    "contact_sheet",
    "plan_counts",
    "render_xray",
    "synthesize",
]
