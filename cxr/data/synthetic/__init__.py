"""Synthetic chest radiographs (SYNTHETIC: not real patients, not medical evidence), numpy and Pillow only.

Findings: COVID bilateral peripheral lower-zone ground glass; Lung_Opacity a lobar consolidation of one
lung; Viral Pneumonia bilateral perihilar streaks; Normal clear lungs.
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
