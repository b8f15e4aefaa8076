"""The ordered class list of the COVID-19 Radiography Database and the decision-support notice.

The order of ``CLASSES`` is the order of every probability vector cxr writes or reads; it is stored in
every exported model's metadata and checked on load.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
"""Class names exactly as the Kaggle folders spell them (note the space in "Viral Pneumonia")."""

REAL_COUNTS: dict[str, int] = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
"""Image counts per class in the COVID-19 Radiography Database (v4, 21,165 images)."""

NOTICE = (
    "Decision support only, not a diagnosis: cxr is not a medical device; "
    "a qualified clinician must review every image and result."
)
"""Shown wherever a result is shown (CLI, reports, API responses, model metadata)."""
