"""Synthetic chest radiographs: the stable import path for :mod:`cxr.data.synthetic` (see there).

``from cxr.data.synth import SynthConfig, synthesize, render_xray`` keeps working for the CLI, the
export verification inputs, the benchmarks and the tests; the generator itself lives in the package.
"""

from __future__ import annotations

from cxr.data.synthetic import (
    DATASET_DIRNAME,
    FINDING_ZONES,
    MARKER_FILE,
    MIN_SIZE,
    SynthConfig,
    SynthError,
    SynthResult,
    contact_sheet,
    plan_counts,
    render_xray,
    synthesize,
)

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
