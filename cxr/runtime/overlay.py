"""Takes a decoded radiograph, its ``Prediction`` and a heatmap; makes the overlay image a clinician reads."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.spec import Prediction

_INFERNO = np.array(  # matplotlib's inferno at 0, 1/8, ..., 1
    [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51], [249, 140, 10],
     [249, 201, 50], [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip
_PALETTE = bytes(  # the colour map at 256 levels, for Pillow's palette lookup
    np.round(
        [np.interp(i / 255 * 8, np.arange(9), _INFERNO[:, c]) for i in range(256) for c in range(3)]
    ).astype(np.uint8)
)
MIN_SIDE = 768  # smaller radiographs are enlarged to this longest side so that the caption stays legible
MAX_SIDE = 1024  # larger ones are reduced to it
ALPHA = 0.6  # opacity of the map where it is 1 (it fades to 0 where the map is 0)
_OPACITY = [round(v * ALPHA) for v in range(256)]  # map level -> paste mask
_FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_BOLD_FILES = ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

BLACK, GREY, RED, ORANGE = (0, 0, 0), (70, 70, 70), (170, 0, 0), (160, 80, 0)


def colormap(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 RGB (inferno)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (v - lo)[..., None]
    return np.round(_INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> Font:
    """DejaVu Sans where the system has it, else Pillow's own scalable default font (each size loaded once:
    fonts are read-only, and loading one costs more than drawing the caption)."""
    for name in _BOLD_FILES if bold else _FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def wrap(text: str, font: Font, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in ``font`` (a longer word alone)."""
    return list(_wrapped(text, font, width))


@functools.lru_cache(maxsize=256)
def _wrapped(text: str, font: Font, width: float) -> tuple[str, ...]:
    """``wrap``, kept per (text, font, width): most of a caption (the notice, the map's legend, the headline of a
    frequent result) repeats from image to image, and measuring it word by word costs more than drawing it."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return tuple(lines)


def _display_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(width, height) at the image's own aspect ratio, its longest side within [MIN_SIDE, max_side]."""
    longest = max(h, w)
    target = min(max(longest, min(MIN_SIDE, max_side)), max_side)
    scale = target / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def headline(pred: Prediction) -> tuple[str, tuple[int, int, int]]:
    """The result in one line, and its colour: class and probability, or NOT ASSESSABLE and why."""
    if not pred.ok:
        return f"NO RESULT: {pred.error}", RED
    label = pred.label or "no result"
    prob = f"{pred.probability:.2f}" if pred.probability is not None else "-"
    if pred.assessable is False:
        why = ", ".join(r.code for r in pred.reasons) or "outside what the model is for"
        return f"NOT ASSESSABLE ({why}) - review the image; model output {label} {prob}", RED
    above = (pred.above_operating_point or {}).get(label)
    point = (
        "" if above is None else (" - above its operating point" if above else " - below its operating point")
    )
    return f"Model output: {label} {prob}{point}", BLACK


def render_overlay(
    image: np.ndarray,
    pred: Prediction,
    heat: np.ndarray | None = None,
    *,
    when: datetime | None = None,
    max_side: int = MAX_SIDE,
) -> Image.Image:
    """The RGB radiograph at a legible size, the map (when given) with its legend, and the caption: class and
    probability (or NOT ASSESSABLE and why), file, model, date ``when`` (default now, UTC), warnings, notice."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise TypeError(
            f"render_overlay takes a uint8 gray [H, W] image, got {image.dtype} {list(image.shape)}"
        )
    h, w = image.shape
    size = _display_size(h, w, max_side)
    picture = _resized(Image.fromarray(image, mode="L"), size)  # gray: the canvas takes it as RGB when pasted
    img_w, img_h = size
    pad, font_px = 12, max(15, img_w // 48)
    bar_w = 16 if heat is not None else 0
    legend_w = bar_w + 8 + int(_font(font_px - 2).getlength("high")) + pad if heat is not None else 0
    width = pad + img_w + legend_w + pad
    text_w = width - 2 * pad
    title_font, font, small = _font(font_px + 2, bold=True), _font(font_px), _font(font_px - 2)
    title, colour = headline(pred)
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    name = PurePath(pred.source).name or pred.source
    details = f"{name} | model {pred.model_id or 'unknown'} | {stamp}"
    blocks: list[tuple[list[str], Font, tuple[int, int, int]]] = [
        (wrap(title, title_font, text_w), title_font, colour),
        (wrap(details, small, text_w), small, GREY),
    ]
    if heat is not None:
        blocks.append(
            (
                wrap(f"Colour: where the ensemble looked for {pred.label} (not a finding, not a segmentation).",
                     small, text_w),
                small,
                GREY,
            )
        )  # fmt: skip
    footer: list[tuple[list[str], Font, tuple[int, int, int]]] = [
        (wrap(f"Warning: {w}", small, text_w), small, ORANGE) for w in pred.warnings
    ]
    footer.append((wrap(pred.notice, font, text_w), font, RED))

    def height(parts: Sequence[tuple[list[str], Font, tuple[int, int, int]]]) -> int:
        return sum(len(lines) * _line_height(f) for lines, f, _ in parts) + pad * len(parts)

    head_h, foot_h = pad + height(blocks), height(footer) + pad
    canvas = Image.new("RGB", (width, head_h + img_h + foot_h), (255, 255, 255))
    canvas.paste(picture, (pad, head_h))
    if heat is not None:  # all in Pillow's C loops, straight onto the canvas
        levels = np.clip(np.nan_to_num(heat), 0.0, 1.0) * 255.0 + 0.5  # 256 levels at the map's own size
        index = Image.fromarray(levels.astype(np.uint8), mode="L").resize(size, Image.Resampling.BILINEAR)
        colours = index.copy()
        colours.putpalette(_PALETTE)  # the levels read through the colour map (mode P, no conversion)
        canvas.paste(colours, (pad, head_h), index.point(_OPACITY))  # opacity grows with the map
    draw = ImageDraw.Draw(canvas)
    y = _draw_blocks(draw, blocks[:2], pad, pad)  # the result and the file: they change from image to image
    # the rest repeats from image to image: drawn once on white (as far as the canvas reaches), then pasted
    for block in blocks[2:]:
        y = _paste_block(canvas, block, pad, y)
    y = head_h + img_h + pad
    for block in footer:
        y = _paste_block(canvas, block, pad, y)
    if heat is not None:
        canvas.paste(_legend(img_h, bar_w, small), (pad + img_w + 8, head_h))
    return canvas


@functools.lru_cache(maxsize=64)
def _block(lines: tuple[str, ...], font: Font, colour: tuple[int, int, int], width: int) -> Image.Image:
    """A caption block drawn on white (``_draw_blocks``'s pixels), kept for the captions that repeat."""
    strip = Image.new("RGB", (width, len(lines) * _line_height(font)), (255, 255, 255))
    _draw_blocks(ImageDraw.Draw(strip), [(list(lines), font, colour)], 0, 0)
    return strip


def _paste_block(
    canvas: Image.Image, block: tuple[list[str], Font, tuple[int, int, int]], x: int, y: int
) -> int:
    lines, font, colour = block
    canvas.paste(_block(tuple(lines), font, colour, canvas.width - x), (x, y))
    return y + len(lines) * _line_height(font) + 12


@functools.lru_cache(maxsize=16)
def _legend(img_h: int, bar_w: int, font: Font) -> Image.Image:
    """The map's colour bar with "high" at its top and "low" at its bottom, on white."""
    width = bar_w + 4 + int(font.getlength("high")) + 2
    legend = Image.new("RGB", (width, img_h), (255, 255, 255))
    bar = colormap(np.linspace(1.0, 0.0, img_h))[:, None, :].repeat(bar_w, axis=1)
    legend.paste(Image.fromarray(bar, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(legend)
    draw.text((bar_w + 4, 0), "high", fill=BLACK, font=font)
    draw.text((bar_w + 4, img_h - _line_height(font)), "low", fill=BLACK, font=font)
    return legend


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` at ``size``. Reduced: whole blocks of pixels averaged first (``Image.reduce``), then the rest by
    area averaging (box filter: each pixel the mean of the source pixels it covers, the antialiased reduction
    with the fewest taps); enlarged (small images): bilinear."""
    if img.size == size:
        return img
    factor = min(img.width // size[0], img.height // size[1])
    if factor >= 2:
        img = img.reduce(factor)
    reducing = img.width >= size[0] and img.height >= size[1]
    return img.resize(size, Image.Resampling.BOX if reducing else Image.Resampling.BILINEAR)


@functools.lru_cache(maxsize=32)
def _line_height(font: Font) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return int(bottom - top) + 6


def _draw_blocks(
    draw: ImageDraw.ImageDraw,
    blocks: Sequence[tuple[list[str], Font, tuple[int, int, int]]],
    x: int,
    y: int,
) -> int:
    for lines, font, colour in blocks:
        for line in lines:
            draw.text((x, y), line, fill=colour, font=font)
            y += _line_height(font)
        y += 12
    return y


def overlay_png(image: np.ndarray, pred: Prediction, heat: np.ndarray | None = None) -> bytes:
    """``render_overlay`` encoded as PNG bytes (the API's answer)."""
    buf = io.BytesIO()
    render_overlay(image, pred, heat).save(buf, format="PNG")
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
    """A ``heatmap_sink`` saving one overlay PNG per image into ``folder``; failures go to ``failed``."""

    def __init__(self, folder: Path, root: Path | None = None) -> None:
        self.folder = Path(folder)
        self.root = root
        self.written: dict[str, Path] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, pred: Prediction, image: np.ndarray, heat: np.ndarray | None) -> None:
        path = self.folder / overlay_name(pred.source, self.root)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            render_overlay(image, pred, heat).save(path, format="PNG")
        except OSError as e:
            self.failed[pred.source] = f"cannot write {path}: {e.strerror or e}"
            return
        self.written[pred.source] = path
