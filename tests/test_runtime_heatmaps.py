"""Heatmaps where people see them: the overlay PNG, `cxr-predict image --heatmap`, `scan --heatmaps`, the API.

One tiny fused ensemble with its heatmap variant (built with torch in the fixture; everything tested here
runs on onnxruntime, Pillow and numpy only).
"""

from __future__ import annotations

import base64
import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from cxr.cli.predict import app  # noqa: E402
from cxr.runtime.overlay import colormap, overlay_name, render_overlay  # noqa: E402
from cxr.spec import Prediction, Reason  # noqa: E402
from tests.onnx_factory import write_gray_pngs  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def heat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr.fuse import FuseConfig, fuse, run_members
    from tests.test_fuse import build_tiny_run

    run = build_tiny_run(tmp_path_factory.mktemp("heatrun"), {"alpha": 32, "beta": 32})
    members, meta = run_members(run)
    cfg = FuseConfig(run / "ensemble.onnx", heatmaps=True, bf16_check=False, report=False)
    fuse(members, meta, cfg)
    return run / "ensemble.onnx"


def _pred(assessable: bool = True) -> Prediction:
    reasons = () if assessable else (Reason("dicom_view_position", "lateral view"),)
    return Prediction("x.png", "COVID", 0.9, {"COVID": 0.9}, assessable=assessable, reasons=reasons)


def _picture_box(img: np.ndarray, value: int) -> tuple[int, int]:
    """(width, height) of the block of the radiograph's plain grey ``value`` (anti-aliased caption text that
    happens to have that grey is too sparse to count)."""
    plain = (img == value).all(axis=2)
    rows, cols = plain.sum(axis=1), plain.sum(axis=0)
    return int((cols > cols.max() / 2).sum()), int((rows > rows.max() / 2).sum())


@pytest.mark.parametrize(
    ("size", "longest"),
    [((1538, 2493), 1024), ((2493, 1538), 1024), ((64, 64), 768), ((299, 256), 768), ((900, 800), 900)],
    ids=["landscape-large", "portrait-large", "tiny", "database-size", "mid"],
)
def test_overlay_keeps_the_radiographs_aspect_ratio_and_caps_its_side(
    size: tuple[int, int], longest: int
) -> None:
    gray = np.full(size, 100, dtype=np.uint8)
    img = np.asarray(render_overlay(gray, _pred()))
    w, h = _picture_box(img, 100)
    assert max(w, h) == longest
    assert w / h == pytest.approx(size[1] / size[0], rel=0.01)  # never stretched to a square
    assert img.shape[1] >= w and img.shape[0] > h  # the caption sits above and below the picture


@pytest.mark.parametrize("size", [(40, 40), (300, 200)])
def test_overlay_shows_the_map_where_it_is_high(size: tuple[int, int]) -> None:
    gray = np.full(size, 100, dtype=np.uint8)
    heat = np.zeros((16, 16), dtype=np.float32)  # the map is at the model's size, resampled onto the image
    heat[:8] = 1.0  # the top half is "where it looked"
    img = np.asarray(render_overlay(gray, _pred(), heat))
    plain = (img == 100).all(axis=2)  # the plain radiograph: the bottom half only
    rows, cols = plain.sum(axis=1), plain.sum(axis=0)
    ys, xs = np.nonzero(rows > rows.max() / 2)[0], np.nonzero(cols > cols.max() / 2)[0]
    x_mid, plain_h = (xs.min() + xs.max()) // 2, len(ys)
    assert len(xs) == pytest.approx(size[1] / max(size) * 768, abs=2)
    assert plain_h < 0.6 * 768 * size[0] / max(size)  # the top half of the picture is not plain grey
    top = img[ys.min() - plain_h // 2, x_mid]
    assert not (top[0] == top[1] == top[2])  # coloured where the map is high


def test_not_assessable_overlay_has_a_red_title() -> None:
    gray = np.full((64, 64), 100, dtype=np.uint8)

    def red_in_title(p: Prediction) -> int:
        title = np.asarray(render_overlay(gray, p))[:40]
        return int(((title[..., 0] > 150) & (title[..., 1] < 60)).sum())

    assert red_in_title(_pred(assessable=False)) > 0 and red_in_title(_pred()) == 0


@pytest.mark.parametrize("width", [120, 300, 800])
def test_caption_wraps_at_spaces_within_the_width_and_keeps_every_word(width: int) -> None:
    from cxr.labels import NOTICE
    from cxr.runtime.overlay import _font, wrap

    font = _font(16)
    text = f"Warning: a long model warning that must wrap cleanly. {NOTICE}"
    lines = wrap(text, font, width)
    assert " ".join(lines).split() == text.split()  # no word lost or glued to the next ("nota finding")
    assert all(font.getlength(line) <= width or " " not in line for line in lines)
    assert len(lines) > 1


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        (_pred(), "Model output: COVID 0.90"),
        (_pred(assessable=False), "NOT ASSESSABLE (dicom_view_position)"),
        (Prediction("x.png", None, None, error="cannot read"), "NO RESULT: cannot read"),
    ],
    ids=["assessable", "not-assessable", "error"],
)
def test_headline_says_the_result_or_why_not(pred: Prediction, expected: str) -> None:
    from cxr.runtime.overlay import headline

    assert headline(pred)[0].startswith(expected)


def test_colormap_runs_dark_to_bright() -> None:
    ends = colormap(np.array([0.0, 0.5, 1.0, np.nan, 2.0]))
    assert ends[0].sum() < ends[1].sum() < ends[2].sum() and list(ends[3]) == list(ends[0])
    assert list(ends[4]) == list(ends[2])


@pytest.mark.parametrize(
    ("source", "root", "name"),
    [
        ("/data/COVID/a.png", Path("/data"), "COVID__a.heatmap.png"),
        ("/data/Normal/a.png", Path("/data"), "Normal__a.heatmap.png"),
        ("/elsewhere/b c.dcm", Path("/data"), "b_c.heatmap.png"),
        ("scan.jpg", None, "scan.heatmap.png"),
    ],
)
def test_overlay_names_keep_files_of_equal_names_apart(source: str, root: Path | None, name: str) -> None:
    assert overlay_name(source, root) == name


def test_image_heatmap_writes_one_overlay_per_file(heat_model: Path, tmp_path: Path) -> None:
    files = write_gray_pngs(tmp_path / "in", 2, size=40)
    out = tmp_path / "overlays"
    res = runner.invoke(
        app, ["image", *map(str, files), "-m", str(heat_model), "--heatmap", "--heatmap-dir", str(out)]
    )
    assert res.exit_code == 0, res.output
    written = sorted(out.glob("*.heatmap.png"))
    assert [p.name for p in written] == sorted(f.stem + ".heatmap.png" for f in files)
    assert Image.open(written[0]).mode == "RGB"
    assert "ensemble.heatmaps.onnx" in res.output  # it ran the heatmap variant beside the model


def test_scan_heatmaps_keeps_going_past_a_bad_file(heat_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scan"
    write_gray_pngs(folder, 3, size=36)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "ov"
    res = runner.invoke(
        app,
        ["scan", str(folder), "-m", str(heat_model), "-o", str(tmp_path / "r.csv"), "--heatmaps", str(out)],
    )
    assert res.exit_code == 1  # one file unreadable, as without heatmaps
    assert len(list(out.glob("*.heatmap.png"))) == 3
    # the heatmap twin computes the plain model's results: a resume without --heatmaps continues the file,
    # and --retry-failed predicts the broken file again (fixed in the meantime), once
    write_gray_pngs(folder, 4, size=36)[-1].rename(folder / "broken.png")
    again = runner.invoke(
        app,
        [
            "scan",
            str(folder),
            "-m",
            str(heat_model),
            "-o",
            str(tmp_path / "r.csv"),
            "--resume",
            "--retry-failed",
        ],
    )
    assert again.exit_code == 0, again.output
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="")))
    assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in folder.iterdir())
    assert all(r["label"] and not r["error"] for r in rows)


def test_heatmaps_without_the_variant_say_how_to_build_it(heat_model: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone" / "ensemble.onnx"
    lone.parent.mkdir()
    lone.write_bytes(heat_model.read_bytes())
    files = write_gray_pngs(tmp_path / "in", 1, size=40)
    res = runner.invoke(app, ["image", str(files[0]), "-m", str(lone), "--heatmap"])
    assert res.exit_code == 2
    assert "ensemble.heatmaps.onnx" in res.output and "cxr fuse RUN_DIR --heatmaps" in res.output
    assert "Traceback" not in res.output


def test_api_returns_the_overlay_on_request(heat_model: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app
    from cxr.serve.config import ServeConfig
    from cxr.session import SessionConfig

    png = write_gray_pngs(tmp_path, 1, size=48)[0].read_bytes()
    for heatmaps in (True, False):
        with TestClient(
            create_app(ServeConfig(model=heat_model, session=SessionConfig(threads=1), heatmaps=heatmaps))
        ) as client:
            deadline = time.monotonic() + 20
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            plain = client.post("/v1/predict", content=png)
            assert plain.status_code == 200 and plain.json()["heatmap_png"] is None
            asked = client.post("/v1/predict?heatmap=true", content=png)
            if heatmaps:
                assert asked.status_code == 200, asked.text
                overlay = Image.open(io.BytesIO(base64.b64decode(asked.json()["heatmap_png"])))
                assert overlay.format == "PNG" and min(overlay.size) >= 448
            else:
                assert asked.status_code == 400 and asked.json()["error"]["code"] == "heatmaps_unavailable"


def test_demo_grid_draws_two_overlays_per_class(heat_model: Path, tmp_path: Path) -> None:
    from cxr.demo.heatmap_grid import COLUMNS, heatmap_grid

    folder = tmp_path / "scan"
    folder.mkdir()
    for i, f in enumerate(write_gray_pngs(tmp_path / "src", 6, size=40)):
        (folder / f"{('COVID', 'Normal')[i % 2]}__{f.name}").write_bytes(f.read_bytes())
    grid = heatmap_grid(heat_model, folder, tmp_path / "out", threads=1)
    assert isinstance(grid, Path) and grid.is_file()
    assert len(list((tmp_path / "out").glob("*.heatmap.png"))) == 4  # two per class
    tile_w = Image.open(next((tmp_path / "out").glob("*.heatmap.png"))).size[0] // 2
    assert Image.open(grid).size[0] == COLUMNS * tile_w
    assert "is not beside it" in str(heatmap_grid(tmp_path / "none.onnx", folder, tmp_path / "o2", threads=1))


def test_heatmaps_run_with_training_libraries_unimportable(heat_model: Path, tmp_path: Path) -> None:
    """Overlays from cxr-predict and the API on a core-only install: torch, onnx, sklearn... cannot load."""
    from tests.test_torch_wall import FORBIDDEN, _run

    write_gray_pngs(tmp_path / "imgs", 2, size=40)
    png = next((tmp_path / "imgs").glob("*.png"))
    code = f"""
        import sys, time
        for name in {FORBIDDEN!r}:
            sys.modules[name] = None
        import cxr.cli.predict
        from typer.testing import CliRunner
        res = CliRunner().invoke(cxr.cli.predict.app, ["scan", {str(tmp_path / "imgs")!r}, "-m",
            {str(heat_model)!r}, "-o", {str(tmp_path / "r.csv")!r}, "--heatmaps", {str(tmp_path / "ov")!r}])
        assert res.exit_code == 0, res.output
        from fastapi.testclient import TestClient
        from cxr.serve.app import create_app
        from cxr.serve.config import ServeConfig
        from cxr.session import SessionConfig
        cfg = ServeConfig(model={str(heat_model)!r}, session=SessionConfig(threads=1), heatmaps=True)
        with TestClient(create_app(cfg)) as c:
            while c.get("/readyz").status_code != 200:
                time.sleep(0.05)
            r = c.post("/v1/predict?heatmap=true", content=open({str(png)!r}, "rb").read())
            assert r.status_code == 200 and r.json()["heatmap_png"], r.text
        print("overlays ok")
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "overlays ok" in proc.stdout and len(list((tmp_path / "ov").glob("*.png"))) == 2
