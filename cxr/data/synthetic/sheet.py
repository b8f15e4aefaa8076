"""A contact sheet of synthetic radiographs, one row per class, captioned as synthetic.

``python -m cxr.data.synthetic docs/synthetic_contact_sheet.png`` draws images 1-4 of every class as
``cxr demo`` writes them (seed 0, 299 px).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.data.synthetic.dataset import image_rng
from cxr.data.synthetic.render import SynthError, render_xray
from cxr.labels import CLASSES

SHEET_TILE = 160
SHEET_CAPTION = "SYNTHETIC - not real patients"


def contact_sheet(images_by_class: dict[str, list[np.ndarray]], path: Path) -> Path:
    """Save a PNG grid of 160 px tiles, one labelled row per class; returns ``path``."""
    rows = [(label, imgs) for label, imgs in images_by_class.items() if len(imgs)]
    if not rows:
        raise SynthError("contact_sheet got no images", hint="pass at least one image for at least one class")
    font = ImageFont.load_default()
    tile, pad, label_w, head_h = SHEET_TILE, 6, 130, 28
    cols = max(len(imgs) for _, imgs in rows)
    sheet = Image.new(
        "L", (label_w + cols * (tile + pad) + pad, head_h + len(rows) * (tile + pad) + pad), color=255
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), SHEET_CAPTION, fill=0, font=font)
    for r, (label, imgs) in enumerate(rows):
        y = head_h + r * (tile + pad)
        draw.text((pad, y + tile // 2 - 6), label, fill=0, font=font)
        for c, img in enumerate(imgs):
            arr = np.asarray(img)
            if arr.ndim != 2 or arr.dtype != np.uint8:
                raise SynthError(
                    f"contact_sheet image {c} of {label!r} has shape {arr.shape} and dtype {arr.dtype}",
                    hint="pass 2-D uint8 arrays as returned by render_xray",
                )
            thumb = Image.fromarray(arr).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (label_w + c * (tile + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path


def demo_images(per_class: int = 4, seed: int = 0, size: int = 299) -> dict[str, list[np.ndarray]]:
    """Images 1..``per_class`` of every class, as :func:`~cxr.data.synthetic.dataset.synthesize` writes them."""
    return {
        label: [render_xray(label, image_rng(seed, k, i), size) for i in range(1, per_class + 1)]
        for k, label in enumerate(CLASSES)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a contact sheet of synthetic radiographs.")
    parser.add_argument("out", type=Path, help="PNG to write, e.g. docs/synthetic_contact_sheet.png")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    contact_sheet(demo_images(args.per_class, args.seed), args.out)
