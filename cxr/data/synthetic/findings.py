"""Class findings of the synthetic radiographs: each returns a density (n x n float32, >= 0, zero outside
the lungs) that ``render_xray`` adds to the anatomy; ``FINDING_ZONES`` says where each lies, in words."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cxr.data.synthetic.anatomy import Frame, ramp, smooth_noise

Finding = Callable[[Frame, np.random.Generator], np.ndarray]

FINDING_ZONES: dict[str, str] = {
    "COVID": "both lungs, lateral third, lower zones (ground glass)",
    "Lung_Opacity": "one lung, its upper or lower lobe (dense consolidation)",
    "Normal": "none",
    "Viral Pneumonia": "both lungs, around the hila, central mid zones (streaks)",
}


def severity(rng: np.random.Generator, low: float = 0.5) -> float:
    """``low``..1, skewed towards 1: most findings are clear, some are subtle."""
    return low + (1.0 - low) * float(rng.beta(2.0, 1.3))


def _per_side(f: Frame, left: float, right: float) -> np.ndarray:
    """``left`` on the image-left lung, ``right`` on the image-right one (soft across the midline)."""
    w = ramp(f.u, 0.1)
    return (left + (right - left) * w).astype(np.float32)


def normal(f: Frame, rng: np.random.Generator) -> np.ndarray:
    """No finding."""
    return np.zeros_like(f.img)


def covid(f: Frame, rng: np.random.Generator) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground-glass opacities: a patchy haze, not a white-out."""
    sev = severity(rng)
    n = f.img.shape[0]
    lower = ramp(f.depth - rng.uniform(0.38, 0.5), 0.3)
    periph = ramp(f.lateral - rng.uniform(-0.25, 0.0), 0.7)
    patchy = np.clip(0.7 + 0.45 * smooth_noise(rng, n, 8), 0.3, 1.0)
    sides = _per_side(f, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    return 0.27 * sev * lower * periph * patchy * sides * f.lung


def lung_opacity(f: Frame, rng: np.random.Generator) -> np.ndarray:
    """A dense lobar consolidation of one lung: upper or lower lobe, fissure edge, air bronchograms."""
    sev = severity(rng, 0.6)
    n = f.img.shape[0]
    side = -1.0 if rng.random() < 0.5 else 1.0
    one_side = ramp(side * f.u - 0.02, 0.06)
    fissure = rng.uniform(0.4, 0.55) + rng.uniform(0.05, 0.25) * f.lateral  # oblique: lower laterally
    noise = smooth_noise(rng, n, 7)
    edge = fissure + 0.05 * noise - f.depth
    lobe = ramp(-edge, 0.1) if rng.random() < 0.6 else ramp(edge, 0.1)  # lower lobe is more common
    bronchograms = 1.0 - 0.5 * np.clip(f.vessels * 2.5, 0.0, 1.0)
    mottle = np.clip(0.82 + 0.18 * smooth_noise(rng, n, 16), 0.6, 1.0)
    return 0.4 * sev * lobe * one_side * mottle * bronchograms * f.lung


def viral_pneumonia(f: Frame, rng: np.random.Generator) -> np.ndarray:
    """Bilateral, diffuse perihilar interstitial streaks: thickened markings and a reticular net."""
    sev = severity(rng)
    n = f.img.shape[0]
    reach = rng.uniform(0.5, 0.62)
    r = f.hilar_radius
    perihilar = np.clip(1.0 - r * (1.0 / reach), 0.0, 1.0) ** 0.6 * ramp(r - 0.06, 0.1)
    wobble = smooth_noise(rng, n, 6)
    phase = f.hilar_angle * float(rng.integers(7, 11)) + rng.uniform(0.0, 2 * math.pi) + 1.5 * wobble
    streaks = np.clip(np.cos(phase), 0.0, 1.0) ** 2
    field = smooth_noise(rng, n, max(8, n // 6))
    net = np.clip(1.0 - np.abs(field) * (1.0 / 0.4), 0.0, 1.0)
    markings = np.clip(f.vessels * 2.0, 0.0, 1.0)
    pattern = 0.5 + 0.4 * streaks + 0.25 * net + 0.1 * markings
    sides = _per_side(f, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))
    return 0.4 * sev * perihilar * pattern * sides * f.lung


FINDINGS: dict[str, Finding] = {
    "COVID": covid,
    "Lung_Opacity": lung_opacity,
    "Normal": normal,
    "Viral Pneumonia": viral_pneumonia,
}
"""Class name -> finding; the keys are :data:`cxr.labels.CLASSES`."""
