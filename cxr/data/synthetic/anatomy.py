"""Normal chest anatomy of a synthetic PA radiograph, on a float canvas (internal to cxr.data.synthetic).

Everything is drawn at about 40 % of the output resolution on float32 grids in [-1, 1] (radiographs are
smooth, and this keeps the generator fast); :mod:`cxr.data.synthetic.render` upsamples at the end.
Image left is the patient's right (PA view): the heart bulges to the image right. :func:`draw_anatomy`
returns a :class:`Frame`: the canvas plus the patient geometry the class findings are placed with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=8)
def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 to 1 around ``x == 0`` over ``width``."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Unit-scale random field with about ``cells`` blobs across, as an ``n x n`` float32 array."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse).resize((n, n), Image.Resampling.BICUBIC)
    return np.asarray(field)


@dataclass
class Frame:
    """Canvas plus the patient geometry that findings need (all arrays n x n float32)."""

    img: np.ndarray
    u: np.ndarray  # patient coordinates after positioning: lateral, + is image right
    v: np.ndarray  # patient coordinates: + is caudal
    lung: np.ndarray  # 0..1 lung field mask
    depth: np.ndarray  # 0 apex .. 1 diaphragm, per pixel, per side
    lateral: np.ndarray  # 0 lung centre line .. 1 lateral border (negative towards medial)
    vessels: np.ndarray  # 0..1 bronchovascular markings pattern
    hilar_radius: np.ndarray  # distance from the nearer hilum
    hilar_angle: np.ndarray  # direction from the nearer hilum (radians, 0 = lateral)
    warp: np.ndarray  # smooth unit-scale field that keeps ribs and markings irregular
    top: float
    dia: tuple[float, float]  # dome height of image-left and image-right hemidiaphragm
    centre: Callable[[float], float]  # lung centre line |u| at height v
    half: Callable[[float], float]  # lung half width at height v


def draw_anatomy(n: int, rng: np.random.Generator) -> Frame:
    u0, v0 = grid(n)
    uniform = rng.uniform

    # Positioning: small rotation, scale and shift of the patient in the field.
    rot, scale = uniform(-0.06, 0.06), uniform(0.9, 1.04)
    tx, ty = uniform(-0.05, 0.05), uniform(-0.04, 0.07)
    cr, sr = math.cos(rot), math.sin(rot)
    du, dv = u0 - tx, v0 - ty
    u = (cr * du + sr * dv) * (1.0 / scale)
    v = (cr * dv - sr * du) * (1.0 / scale)
    d = np.abs(u)
    right = u > 0

    # Habitus.
    width = uniform(0.86, 0.96)
    soft = uniform(0.5, 0.6)
    lung_dark = uniform(0.3, 0.38)
    bone = uniform(0.06, 0.1)
    top = uniform(-0.78, -0.68)
    dia_l = uniform(0.3, 0.42)  # image left = patient right, usually higher
    dia_r = dia_l + uniform(0.0, 0.08)
    c_apex, c_base = width * uniform(0.34, 0.38), width * uniform(0.47, 0.5)
    h_max = width * uniform(0.38, 0.42)

    def centre(y: float) -> float:
        s = min(1.0, max(0.0, (y - top) / (dia_l - top)))
        return c_apex + (c_base - c_apex) * min(1.0, s / 0.6)

    def half(y: float) -> float:
        s = min(1.0, max(0.0, (y - top) / (dia_l - top)))
        return h_max * math.sqrt(min(1.0, s / 0.4)) * (0.8 + 0.2 * s)

    # Thorax soft tissue: shoulders, neck, a cylinder-like thickness profile, sometimes arms.
    a = width * (0.95 + 0.05 * v)
    thick = np.sqrt(np.clip(1.0 - (u / a) ** 2, 0.0, 1.0))
    neck = np.clip((d - 0.22) * (1.0 / (0.75 * width)), 0.0, None)
    shoulders = ramp(v - (-1.1 + 0.5 * neck * np.sqrt(neck)), 0.08)
    tissue = ramp(a - d, 0.04) * shoulders
    img = 0.02 + soft * tissue * (0.2 + 0.8 * thick)
    arms = uniform(0.0, 0.7)
    img += arms * soft * ramp(d - a - 0.03, 0.04) * ramp(a + 0.25 - d, 0.1) * ramp(0.2 - v, 0.6)

    # Lung fields: rounded apices, convex lateral borders, domed bases with sharp angles.
    dia = np.where(right, np.float32(dia_r), np.float32(dia_l))
    depth = np.clip((v - top) / (dia - top), 0.0, 1.0)
    c_v = c_apex + (c_base - c_apex) * np.clip(depth * (1.0 / 0.6), 0.0, 1.0)
    hw = h_max * np.sqrt(np.clip(depth * (1.0 / 0.4), 0.0, 1.0)) * (0.8 + 0.2 * depth) + 1e-3
    off = d - c_v
    lateral = off / hw
    dome = dia + 0.22 * np.clip(lateral, -1.2, 1.2) ** 2
    lung = ramp(hw - np.abs(off), 0.045) * ramp(dome - v, 0.03) * ramp(v - top, 0.03)
    profile = np.sqrt(np.clip(1.0 - lateral**2, 0.0, 1.0))

    # Heart: soft-tissue density in front of the lungs, bulging to the image right.
    hx, hy = uniform(0.04, 0.09), dia_r + uniform(-0.04, 0.02)
    hrx, hry = width * uniform(0.42, 0.52), uniform(0.36, 0.42)
    rx = np.where(u > hx, np.float32(hrx), np.float32(hrx * 0.45))
    r2 = ((u - hx) / rx) ** 2 + ((v - hy) * (1.0 / hry)) ** 2
    heart = np.clip((1.0 - r2) * 6.0, 0.0, 1.0)
    # Mediastinum above it, widening towards the heart.
    mw = 0.14 + 0.08 * np.clip(v - top, 0.0, 1.0)
    med = ramp(mw - d, 0.05) * ramp(hy - v, 0.2)
    knob = np.clip((1.0 - ((u - 0.11) ** 2 + (v - top - 0.38) ** 2) * (1.0 / 0.08**2)) * 2.0, 0, 1)
    front = np.maximum(np.maximum(heart, med), knob)
    img -= lung_dark * lung * (0.72 + 0.28 * profile) * (1.0 - 0.85 * front)
    img += (0.06 * heart + 0.04 * med) * ramp(dome - v, 0.05)

    # Abdomen below the domes, trachea, spine.
    img += uniform(0.0, 0.05) * tissue * ramp(v - dome, 0.05)
    img -= 0.08 * ramp(0.035 - np.abs(u + 0.01), 0.02) * ramp(top + 0.35 - v, 0.08)
    spine_ph = uniform(0.0, 1.0)
    vert = 0.85 + 0.15 * np.cos((v * (1.0 / 0.1) + spine_ph) * (2 * math.pi))
    img += bone * 0.7 * ramp(0.075 - d, 0.04) * vert * (1.0 - 0.6 * heart) * shoulders
    lung = lung * (1.0 - 0.8 * front)

    # Posterior ribs: arcs rising a little from the spine and falling laterally, spacing
    # widening caudally, brighter where they cross aerated lung. A warp keeps them irregular.
    warp = smooth_noise(rng, n, 4)
    curve = (-0.3 * d + 0.75 * d * d) * uniform(0.85, 1.15)
    w = v - curve
    spacing = uniform(0.1, 0.12)
    phase = (w - top) * (1.0 / spacing) * (1.0 - 0.12 * (w - top)) + uniform(0.0, 1.0)
    phase += 0.12 * warp
    band = np.clip((np.cos(phase * (2 * math.pi)) - 0.2) * 1.4, 0.0, 1.0)
    cage = (
        ramp(a - 0.06 - d, 0.08)
        * ramp(d - 0.08, 0.05)
        * ramp(v - top + 0.15, 0.08)
        * ramp(dome + 0.05 - v, 0.1)
    )
    img += bone * band * cage * (0.3 + 0.7 * lung)
    # Anterior ribs: fainter, sloping down towards the midline.
    ant = np.cos((v + 0.55 * d) * (1.0 / 0.2) * (2 * math.pi) + uniform(0.0, 6.3))
    img += bone * 0.5 * np.clip(ant - 0.4, 0.0, 1.0) * lung * ramp(d - 0.2, 0.1)

    # Clavicles: from the sternal notch out and up to the shoulders.
    cy = top + uniform(0.1, 0.2)
    clav_line = v - (cy - 0.45 * (d - 0.08) + 0.25 * (d - 0.08) ** 2)
    clav = np.sqrt(np.clip(1.0 - np.abs(clav_line) * (1.0 / 0.035), 0.0, 1.0))
    img += bone * 1.3 * clav * ramp(d - 0.09, 0.04) * ramp(0.72 * width - d, 0.08)

    # Breast shadows (sometimes) and gastric bubble under the left hemidiaphragm (image right).
    if rng.random() < 0.5:
        edge = dia_l + 0.05 + 0.5 * (d - 0.55) ** 2 + uniform(-0.05, 0.05)
        img += (
            uniform(0.04, 0.1)
            * ramp(edge - v, 0.03)
            * np.clip((v - edge + 0.5) * 2.0, 0.0, 1.0)
            * ramp(d - 0.3, 0.2)
            * tissue
        )
    if rng.random() < 0.6:
        gx, gy = uniform(0.25, 0.45), dia_r + uniform(0.1, 0.16)
        gas = ((u - gx) * (1.0 / 0.1)) ** 2 + ((v - gy) * (1.0 / 0.055)) ** 2
        img -= uniform(0.05, 0.12) * np.clip(1.0 - gas, 0.0, 1.0) ** 0.5 * ramp(v - dome, 0.02)

    # Hila and bronchovascular markings fanning out from them, fading to the periphery.
    hdx, hdy = d - 0.17, v - (top + 0.62)
    radius = np.sqrt(hdx * hdx + hdy * hdy)
    angle = np.arctan2(hdy, hdx)
    fade = np.clip(1.0 - radius * (1.0 / 0.75), 0.0, 1.0) ** 3
    vessels = np.clip(np.cos(angle * 16.0 + 2.5 * warp) - 0.5, 0.0, 1.0) * fade
    img += uniform(0.16, 0.26) * vessels * lung
    hilum = np.clip(1.0 - radius * radius * (1.0 / 0.03), 0.0, 1.0) ** 2
    img += uniform(0.05, 0.09) * hilum * ramp(d - 0.1, 0.05)

    # A small calcified granuloma now and then, in any class.
    if rng.random() < 0.15:
        side = 1.0 if rng.random() < 0.5 else -1.0
        gy = top + uniform(0.2, 0.9) * (dia_l - top)
        gx = side * (centre(gy) + half(gy) * uniform(-0.6, 0.6))
        gran = np.clip(1.0 - ((u - gx) ** 2 + (v - gy) ** 2) * (1.0 / 0.018**2), 0.0, 1.0)
        img += uniform(0.15, 0.3) * gran

    return Frame(
        img=img,
        u=u,
        v=v,
        lung=lung,
        depth=depth,
        lateral=lateral,
        vessels=vessels,
        hilar_radius=radius,
        hilar_angle=angle,
        warp=warp,
        top=top,
        dia=(dia_l, dia_r),
        centre=centre,
        half=half,
    )
