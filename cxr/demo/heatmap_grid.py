"""Takes the fused model and the demo's scan folder; makes overlays of a few test images per class and ``grid.png``."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from cxr.errors import ModelError
from cxr.labels import NOTICE

COLUMNS = 4


def _pick(folder: Path, per_class: int) -> list[Path]:
    chosen: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        cls = f.name.split("__", 1)[0]
        if len(chosen.setdefault(cls, [])) < per_class:
            chosen[cls].append(f)
    return [f for files in chosen.values() for f in files]


def heatmap_grid(
    model: Path, folder: Path, out_dir: Path, threads: int | None, per_class: int = 2
) -> Path | str:
    """Overlays of ``per_class`` images per class (``<class>__<file>``) and ``out_dir/grid.png``, or why not."""
    from cxr.runtime.locate import heatmap_variant
    from cxr.runtime.overlay import OverlayWriter
    from cxr.runtime.predictor import Predictor, PredictorConfig
    from cxr.session import SessionConfig

    try:
        variant = heatmap_variant(model)
    except ModelError as e:
        return e.message
    files = _pick(folder, per_class)
    if not files:
        return f"no images in {folder}"
    writer = OverlayWriter(out_dir)
    cfg = PredictorConfig(session=SessionConfig(threads=threads), heatmap_sink=writer)
    Predictor.from_path(variant, cfg).predict([str(f) for f in files])
    tiles = [Image.open(writer.written[str(f)]).convert("RGB") for f in files if str(f) in writer.written]
    if not tiles:
        return "no overlay could be written: " + "; ".join(writer.failed.values())
    w, h = (side // 2 for side in tiles[0].size)  # tiles at half size
    rows = -(-len(tiles) // COLUMNS)
    title_h = 28
    grid = Image.new("RGB", (COLUMNS * w, rows * h + title_h), (255, 255, 255))
    ImageDraw.Draw(grid).text(
        (8, 6),
        f"SYNTHETIC test images (cxr demo): where the ensemble looked for its class. {NOTICE}",
        fill=(150, 0, 0),
    )
    for i, tile in enumerate(tiles):
        grid.paste(
            tile.resize((w, h), Image.Resampling.LANCZOS), ((i % COLUMNS) * w, title_h + (i // COLUMNS) * h)
        )
    path = out_dir / "grid.png"
    grid.save(path)
    return path
