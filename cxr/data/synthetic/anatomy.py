"""Normal chest anatomy of a synthetic PA radiograph on a float canvas in [-1, 1] (about 40 % of the output
size); ``draw_anatomy`` returns a ``Frame``: the canvas and the geometry findings are placed with. Image left
is the patient's right."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass
class _Habitus:
    """The patient's build and the lung outline's parameters, drawn once per image."""

    width: float
    soft: float
    lung_dark: float
    bone: float
    top: float
    dia_l: float  # image left = patient right, usually higher
    dia_r: float
    c_apex: float
    c_base: float
    h_max: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Habitus:
        uniform = rng.uniform
        width, soft, lung_dark = uniform(0.86, 0.96), uniform(0.5, 0.6), uniform(0.3, 0.38)
        bone, top, dia_l = uniform(0.06, 0.1), uniform(-0.78, -0.68), uniform(0.3, 0.42)
        dia_r = dia_l + uniform(0.0, 0.08)
        c_apex, c_base = width * uniform(0.34, 0.38), width * uniform(0.47, 0.5)
        h_max = width * uniform(0.38, 0.42)
        return cls(width, soft, lung_dark, bone, top, dia_l, dia_r, c_apex, c_base, h_max)

    def centre(self, y: float) -> float:
        s = min(1.0, max(0.0, (y - self.top) / (self.dia_l - self.top)))
        return self.c_apex + (self.c_base - self.c_apex) * min(1.0, s / 0.6)

    def half(self, y: float) -> float:
        s = min(1.0, max(0.0, (y - self.top) / (self.dia_l - self.top)))
        return self.h_max * math.sqrt(min(1.0, s / 0.4)) * (0.8 + 0.2 * s)


@dataclass
class _Body:
    """The arrays one stage of the drawing hands to the next (n x n float32, patient coordinates)."""

    u: np.ndarray
    v: np.ndarray
    d: np.ndarray  # |u|
    h: _Habitus
    img: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # thorax half width at v
    tissue: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    shoulders: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    depth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    lateral: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    dome: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    lung: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    heart: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    front: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _position(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates after a small rotation, scale and shift of the patient in the field."""
    u0, v0 = grid(n)
    uniform = rng.uniform
    rot, scale = uniform(-0.06, 0.06), uniform(0.9, 1.04)
    tx, ty = uniform(-0.05, 0.05), uniform(-0.04, 0.07)
    cr, sr = math.cos(rot), math.sin(rot)
    du, dv = u0 - tx, v0 - ty
    return (cr * du + sr * dv) * (1.0 / scale), (cr * dv - sr * du) * (1.0 / scale)


def _soft_tissue(b: _Body, rng: np.random.Generator) -> None:
    """Thorax soft tissue: shoulders, neck, a cylinder-like thickness profile, sometimes arms."""
    u, v, d, width = b.u, b.v, b.d, b.h.width
    b.a = a = width * (0.95 + 0.05 * v)
    thick = np.sqrt(np.clip(1.0 - (u / a) ** 2, 0.0, 1.0))
    neck = np.clip((d - 0.22) * (1.0 / (0.75 * width)), 0.0, None)
    b.shoulders = ramp(v - (-1.1 + 0.5 * neck * np.sqrt(neck)), 0.08)
    b.tissue = ramp(a - d, 0.04) * b.shoulders
    b.img = 0.02 + b.h.soft * b.tissue * (0.2 + 0.8 * thick)
    arms = rng.uniform(0.0, 0.7)
    b.img += arms * b.h.soft * ramp(d - a - 0.03, 0.04) * ramp(a + 0.25 - d, 0.1) * ramp(0.2 - v, 0.6)


def _lung_fields(b: _Body) -> np.ndarray:
    """Lung fields: rounded apices, convex lateral borders, domed bases; returns the thickness profile."""
    h, v = b.h, b.v
    dia = np.where(b.u > 0, np.float32(h.dia_r), np.float32(h.dia_l))
    b.depth = depth = np.clip((v - h.top) / (dia - h.top), 0.0, 1.0)
    c_v = h.c_apex + (h.c_base - h.c_apex) * np.clip(depth * (1.0 / 0.6), 0.0, 1.0)
    hw = h.h_max * np.sqrt(np.clip(depth * (1.0 / 0.4), 0.0, 1.0)) * (0.8 + 0.2 * depth) + 1e-3
    off = b.d - c_v
    b.lateral = off / hw
    b.dome = dia + 0.22 * np.clip(b.lateral, -1.2, 1.2) ** 2
    b.lung = ramp(hw - np.abs(off), 0.045) * ramp(b.dome - v, 0.03) * ramp(v - h.top, 0.03)
    return np.sqrt(np.clip(1.0 - b.lateral**2, 0.0, 1.0))


def _heart_and_mediastinum(b: _Body, profile: np.ndarray, rng: np.random.Generator) -> None:
    """Heart in front of the lungs, bulging to the image right; mediastinum and aortic knob above it."""
    u, v, d, h, uniform = b.u, b.v, b.d, b.h, rng.uniform
    hx, hy = uniform(0.04, 0.09), h.dia_r + uniform(-0.04, 0.02)
    hrx, hry = h.width * uniform(0.42, 0.52), uniform(0.36, 0.42)
    rx = np.where(u > hx, np.float32(hrx), np.float32(hrx * 0.45))
    r2 = ((u - hx) / rx) ** 2 + ((v - hy) * (1.0 / hry)) ** 2
    b.heart = np.clip((1.0 - r2) * 6.0, 0.0, 1.0)
    mw = 0.14 + 0.08 * np.clip(v - h.top, 0.0, 1.0)
    med = ramp(mw - d, 0.05) * ramp(hy - v, 0.2)
    knob = np.clip((1.0 - ((u - 0.11) ** 2 + (v - h.top - 0.38) ** 2) * (1.0 / 0.08**2)) * 2.0, 0, 1)
    b.front = np.maximum(np.maximum(b.heart, med), knob)
    b.img -= h.lung_dark * b.lung * (0.72 + 0.28 * profile) * (1.0 - 0.85 * b.front)
    b.img += (0.06 * b.heart + 0.04 * med) * ramp(b.dome - v, 0.05)


def _abdomen_trachea_spine(b: _Body, rng: np.random.Generator) -> None:
    u, v, d, top = b.u, b.v, b.d, b.h.top
    b.img += rng.uniform(0.0, 0.05) * b.tissue * ramp(v - b.dome, 0.05)
    b.img -= 0.08 * ramp(0.035 - np.abs(u + 0.01), 0.02) * ramp(top + 0.35 - v, 0.08)
    spine_ph = rng.uniform(0.0, 1.0)
    vert = 0.85 + 0.15 * np.cos((v * (1.0 / 0.1) + spine_ph) * (2 * math.pi))
    b.img += b.h.bone * 0.7 * ramp(0.075 - d, 0.04) * vert * (1.0 - 0.6 * b.heart) * b.shoulders
    b.lung = b.lung * (1.0 - 0.8 * b.front)


def _ribs_and_clavicles(b: _Body, warp: np.ndarray, rng: np.random.Generator) -> None:
    """Posterior ribs (arcs, spacing widening caudally, irregular by ``warp``), anterior ribs, clavicles."""
    v, d, h, uniform = b.v, b.d, b.h, rng.uniform
    curve = (-0.3 * d + 0.75 * d * d) * uniform(0.85, 1.15)
    w = v - curve
    spacing = uniform(0.1, 0.12)
    phase = (w - h.top) * (1.0 / spacing) * (1.0 - 0.12 * (w - h.top)) + uniform(0.0, 1.0)
    phase += 0.12 * warp
    band = np.clip((np.cos(phase * (2 * math.pi)) - 0.2) * 1.4, 0.0, 1.0)
    cage = (
        ramp(b.a - 0.06 - d, 0.08)
        * ramp(d - 0.08, 0.05)
        * ramp(v - h.top + 0.15, 0.08)
        * ramp(b.dome + 0.05 - v, 0.1)
    )
    b.img += h.bone * band * cage * (0.3 + 0.7 * b.lung)
    ant = np.cos((v + 0.55 * d) * (1.0 / 0.2) * (2 * math.pi) + uniform(0.0, 6.3))
    b.img += h.bone * 0.5 * np.clip(ant - 0.4, 0.0, 1.0) * b.lung * ramp(d - 0.2, 0.1)
    cy = h.top + uniform(0.1, 0.2)
    clav_line = v - (cy - 0.45 * (d - 0.08) + 0.25 * (d - 0.08) ** 2)
    clav = np.sqrt(np.clip(1.0 - np.abs(clav_line) * (1.0 / 0.035), 0.0, 1.0))
    b.img += h.bone * 1.3 * clav * ramp(d - 0.09, 0.04) * ramp(0.72 * h.width - d, 0.08)


def _breasts_and_gastric_bubble(b: _Body, rng: np.random.Generator) -> None:
    """Breast shadows (sometimes) and a gastric bubble under the left hemidiaphragm (image right)."""
    u, v, d, h, uniform = b.u, b.v, b.d, b.h, rng.uniform
    if rng.random() < 0.5:
        edge = h.dia_l + 0.05 + 0.5 * (d - 0.55) ** 2 + uniform(-0.05, 0.05)
        b.img += (
            uniform(0.04, 0.1)
            * ramp(edge - v, 0.03)
            * np.clip((v - edge + 0.5) * 2.0, 0.0, 1.0)
            * ramp(d - 0.3, 0.2)
            * b.tissue
        )
    if rng.random() < 0.6:
        gx, gy = uniform(0.25, 0.45), h.dia_r + uniform(0.1, 0.16)
        gas = ((u - gx) * (1.0 / 0.1)) ** 2 + ((v - gy) * (1.0 / 0.055)) ** 2
        b.img -= uniform(0.05, 0.12) * np.clip(1.0 - gas, 0.0, 1.0) ** 0.5 * ramp(v - b.dome, 0.02)


def _hila_and_markings(
    b: _Body, warp: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hila and bronchovascular markings fanning out from them: (vessels, hilar radius, hilar angle)."""
    hdx, hdy = b.d - 0.17, b.v - (b.h.top + 0.62)
    radius = np.sqrt(hdx * hdx + hdy * hdy)
    angle = np.arctan2(hdy, hdx)
    fade = np.clip(1.0 - radius * (1.0 / 0.75), 0.0, 1.0) ** 3
    vessels = np.clip(np.cos(angle * 16.0 + 2.5 * warp) - 0.5, 0.0, 1.0) * fade
    b.img += rng.uniform(0.16, 0.26) * vessels * b.lung
    hilum = np.clip(1.0 - radius * radius * (1.0 / 0.03), 0.0, 1.0) ** 2
    b.img += rng.uniform(0.05, 0.09) * hilum * ramp(b.d - 0.1, 0.05)
    return vessels, radius, angle


def _granuloma(b: _Body, rng: np.random.Generator) -> None:
    """A small calcified granuloma now and then, in any class."""
    if rng.random() < 0.15:
        h, uniform = b.h, rng.uniform
        side = 1.0 if rng.random() < 0.5 else -1.0
        gy = h.top + uniform(0.2, 0.9) * (h.dia_l - h.top)
        gx = side * (h.centre(gy) + h.half(gy) * uniform(-0.6, 0.6))
        gran = np.clip(1.0 - ((b.u - gx) ** 2 + (b.v - gy) ** 2) * (1.0 / 0.018**2), 0.0, 1.0)
        b.img += uniform(0.15, 0.3) * gran


def draw_anatomy(n: int, rng: np.random.Generator) -> Frame:
    """One normal chest at ``n`` x ``n``: every structure in a fixed order of random draws."""
    u, v = _position(n, rng)
    b = _Body(u=u, v=v, d=np.abs(u), h=_Habitus.draw(rng))
    _soft_tissue(b, rng)
    profile = _lung_fields(b)
    _heart_and_mediastinum(b, profile, rng)
    _abdomen_trachea_spine(b, rng)
    warp = smooth_noise(rng, n, 4)
    _ribs_and_clavicles(b, warp, rng)
    _breasts_and_gastric_bubble(b, rng)
    vessels, radius, angle = _hila_and_markings(b, warp, rng)
    _granuloma(b, rng)
    return Frame(b.img, u, v, b.lung, b.depth, b.lateral, vessels, radius, angle)
