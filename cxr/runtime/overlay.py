"""Heatmap overlay PNGs a reader can take in at a glance: the radiograph, where the ensemble looked, the result.

Takes: the uint8 gray image the model saw [H, W], the ensemble's heatmap for the predicted class [H, W] in
[0, 1] (``heatmap`` output of ``ensemble.heatmaps.onnx``) and the image's ``Prediction``. Makes: an RGB
``PIL.Image`` (``render_overlay``) with the map blended over the radiograph (transparent where the map is
low), a colour bar legend, the class and probability (or "NOT ASSESSABLE" with the reasons) and the
decision-support notice burnt in; ``overlay_name`` gives each source file a unique overlay file name.
Numpy and Pillow only (the torch-free runtime); the colour map is matplotlib's "inferno", sampled at nine
points (matplotlib is not a runtime dependency).
"""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.labels import NOTICE
from cxr.runtime.types import Prediction

_INFERNO = np.array(  # matplotlib's inferno at 0, 1/8, ..., 1
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
MIN_SIDE = 448  # overlays are drawn at least this large so the text stays legible
ALPHA = 0.6  # opacity of the map where it is 1 (it fades to 0 where the map is 0)


def colormap(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 RGB (inferno)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (v - lo)[..., None]
    return np.round(_INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def render_overlay(gray: np.ndarray, heat: np.ndarray, pred: Prediction) -> Image.Image:
    """The overlay image (see the module docstring)."""
    h, w = gray.shape
    scale = max(1, int(np.ceil(MIN_SIDE / max(h, w))))
    base = Image.fromarray(gray, mode="L").resize((w * scale, h * scale), Image.Resampling.BILINEAR)
    heat_img = Image.fromarray(np.clip(heat, 0.0, 1.0).astype(np.float32), mode="F")
    heat_up = np.asarray(heat_img.resize(base.size, Image.Resampling.BILINEAR), dtype=np.float64)
    rgb = np.repeat(np.asarray(base, dtype=np.float64)[..., None], 3, axis=2)
    alpha = (ALPHA * heat_up)[..., None]
    blended = (rgb * (1 - alpha) + colormap(heat_up) * alpha).round().astype(np.uint8)
    img_w, img_h = base.size
    bar_w, pad, font_px = 18, 10, max(12, img_w // 36)
    font, small = _font(font_px), _font(max(10, font_px - 3))
    notice_lines = textwrap.wrap(NOTICE, width=max(40, int(img_w / (font_px * 0.5))))
    head_h = 2 * (font_px + 6) + pad
    foot_h = len(notice_lines) * (font_px + 2) + 2 * pad
    canvas = Image.new("RGB", (img_w + bar_w + 6 * pad, img_h + head_h + foot_h), (255, 255, 255))
    canvas.paste(Image.fromarray(blended, mode="RGB"), (pad, head_h))
    draw = ImageDraw.Draw(canvas)
    title, detail, colour = _headline(pred)
    draw.text((pad, pad // 2), title, fill=colour, font=font)
    draw.text((pad, pad // 2 + font_px + 6), detail, fill=(60, 60, 60), font=small)
    # the legend: a vertical colour bar, high at the top
    bar = colormap(np.linspace(1.0, 0.0, img_h))[:, None, :].repeat(bar_w, axis=1)
    x_bar = img_w + 2 * pad
    canvas.paste(Image.fromarray(bar, mode="RGB"), (x_bar, head_h))
    draw.text((x_bar + bar_w + 3, head_h), "high", fill=(0, 0, 0), font=small)
    draw.text((x_bar + bar_w + 3, head_h + img_h - font_px), "low", fill=(0, 0, 0), font=small)
    y = head_h + img_h + pad
    for line in notice_lines:
        draw.text((pad, y), line, fill=(150, 0, 0), font=small)
        y += font_px + 2
    return canvas


def _headline(pred: Prediction) -> tuple[str, str, tuple[int, int, int]]:
    """(title, detail line, title colour) for the prediction."""
    label = pred.label or "no result"
    prob = f"{pred.confidence:.2f}" if pred.confidence is not None else "-"
    detail = "map: where the ensemble looked for this class (not a finding, not a segmentation)"
    if pred.assessable is False:
        why = "; ".join(r.code for r in pred.reasons) or "outside what the model is for"
        return f"NOT ASSESSABLE ({why}) - model output {label} {prob}", detail, (180, 0, 0)
    above = (pred.above_operating_point or {}).get(label)
    point = (
        "" if above is None else (" (above its operating point)" if above else " (below its operating point)")
    )
    return f"model output: {label} {prob}{point}", detail, (0, 0, 0)


def overlay_png(gray: np.ndarray, heat: np.ndarray, pred: Prediction) -> bytes:
    """``render_overlay`` encoded as PNG bytes (the API's answer)."""
    buf = io.BytesIO()
    render_overlay(gray, heat, pred).save(buf, format="PNG")
    return buf.getvalue()


def overlay_name(source: str, root: Path | None = None) -> str:
    """A file name for ``source``'s overlay: its path below ``root`` with separators as ``__``, + .heatmap.png."""
    path = Path(source)
    try:
        rel = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    stem = "__".join(rel.with_suffix("").parts) or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".heatmap.png"


class OverlayWriter:
    """A ``PredictorConfig.heatmap_sink`` that saves one overlay PNG per image into ``folder``.

    Names come from ``overlay_name`` (relative to ``root`` when given); ``written`` maps each source to its
    overlay. A file that cannot be written is logged in ``failed`` and never stops the scan.
    """

    def __init__(self, folder: Path, root: Path | None = None) -> None:
        self.folder = Path(folder)
        self.root = root
        self.written: dict[str, Path] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, pred: Prediction, gray: np.ndarray, heat: np.ndarray) -> None:
        path = self.folder / overlay_name(pred.source, self.root)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            render_overlay(gray, heat, pred).save(path, format="PNG")
        except OSError as e:
            self.failed[pred.source] = f"cannot write {path}: {e.strerror or e}"
            return
        self.written[pred.source] = path
