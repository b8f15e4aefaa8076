"""Folder scans: file selection, result rows (CSV and JSONL), per-batch flushing, resume and its refusals."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import ConfigError, DataError
from cxr.labels import CLASSES, NOTICE
from cxr.runtime import Predictor, PredictorConfig, ScanConfig, find_images, scan_folder
from cxr.runtime.results import csv_columns, read_previous
from tests.onnx_factory import make_fused_model, write_gray_pngs


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "xrays"
    write_gray_pngs(root, 5)
    write_gray_pngs(root / "sub", 2, seed=1)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"x")
    (root / "broken.png").write_text("definitely not a png")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(root / "UPPER.JPG")
    dicom_like = bytes.fromhex("0800050043530000") + bytes(200)  # suffix-less file starting with (0008,0005)
    (root / "IM000001").write_bytes(dicom_like)
    (root / "README").write_text("hello")
    return root


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_path(
        make_fused_model(tmp_path_factory.mktemp("m") / "f.onnx"), PredictorConfig(batch_size=3)
    )


def _names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_default_selection(folder: Path) -> None:
    names = _names(find_images(folder), folder)
    assert names == ["IM000001", "UPPER.JPG", "broken.png", *[f"img_{i:03d}.png" for i in range(5)]]
    rec = _names(find_images(folder, recursive=True), folder)
    assert rec[-2:] == ["sub/img_000.png", "sub/img_001.png"] and ".hidden.png" not in rec


@pytest.mark.parametrize(
    "include,exclude,expected",
    [
        (
            ("*.png",),
            ("img_00[2-4]*",),
            ["broken.png", "img_000.png", "img_001.png", "sub/img_000.png", "sub/img_001.png"],
        ),
        (("*.jpg",), (), ["UPPER.JPG"]),
        ((), ("img_00[1-4].png", "IM0*"), ["UPPER.JPG", "broken.png", "img_000.png", "sub/img_000.png"]),
        (("sub/*",), (), ["sub/img_000.png", "sub/img_001.png"]),
        (("*",), ("*.png", "*.jpg", "im0*"), ["README", "notes.txt"]),  # globs ignore case
    ],
)
def test_include_and_exclude_globs(
    folder: Path, include: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]
) -> None:
    found = find_images(folder, recursive=True, include=include, exclude=exclude)
    assert _names(found, folder) == expected


def test_missing_folder_and_empty_folder_are_refused(tmp_path: Path, predictor: Predictor) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    write_gray_pngs(tmp_path / "empty" / "deeper", 1)
    with pytest.raises(DataError, match="no images found") as info:
        scan_folder(predictor, ScanConfig(tmp_path / "empty", output=tmp_path / "r.csv"))
    assert "--recursive" in (info.value.hint or "")


def test_csv_rows_one_per_file_with_errors(folder: Path, predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = scan_folder(predictor, ScanConfig(folder, output=out))
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == csv_columns(CLASSES, predictor.member_names)
    assert [Path(r["source"]).name for r in rows] == _names(find_images(folder), folder)
    by_name = {Path(r["source"]).name: r for r in rows}
    for name in ("IM000001", "broken.png"):
        assert (
            by_name[name]["error"]
            and by_name[name]["label"] == ""
            and by_name[name]["probabilities.COVID"] == ""
        )
    good = by_name["img_000.png"]
    assert good["error"] == "" and good["label"] in CLASSES
    probs = [float(good[f"probabilities.{c}"]) for c in CLASSES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and float(good["probability"]) == max(probs)
    assert {r["provider"] for r in rows} == {"cpu"} and {r["model_id"] for r in rows} == {predictor.model_id}
    assert {r["notice"] for r in rows} == {NOTICE}
    assert (result.found, result.predicted, result.failed, result.exit_code) == (8, 6, 2, 1)
    assert sum(result.counts.values()) == 6 and result.images_per_second > 0


def test_jsonl_rows_carry_nested_probabilities(folder: Path, predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    scan_folder(predictor, ScanConfig(folder, include=("img_*",), output=out))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5
    r = recs[0]
    assert r["label"] in CLASSES and set(r["probabilities"]) == set(CLASSES)
    assert set(r["member_probabilities"]) == {"alpha", "beta"} and r["error"] is None
    assert r["model_id"] == predictor.model_id and r["provider"] == "cpu" and r["notice"] == NOTICE


def test_rows_go_to_a_stream_without_output(folder: Path, predictor: Predictor) -> None:
    buf = io.StringIO()
    scan_folder(predictor, ScanConfig(folder, include=("img_*",)), stream=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("source,label,probability,probabilities.COVID") and len(lines) == 6


def test_rows_are_flushed_after_every_batch(folder: Path, predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    seen: list[int] = []

    def on_batch(preds: object) -> None:
        seen.append(len(out.read_text().splitlines()) - 1)  # rows on disk now, header excluded

    scan_folder(predictor, ScanConfig(folder, output=out), on_batch=on_batch)
    assert seen == [3, 6, 8]  # batch size 3: every batch is on disk before the next one starts


def test_existing_output_needs_resume_or_overwrite(
    folder: Path, predictor: Predictor, tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    scan_folder(predictor, ScanConfig(folder, output=out))
    with pytest.raises(ConfigError, match="already exists"):
        scan_folder(predictor, ScanConfig(folder, output=out))
    again = scan_folder(predictor, ScanConfig(folder, output=out, overwrite=True))
    assert again.found == 8 and len(out.read_text().splitlines()) == 9


def _rows_without_timing(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    else:
        rows = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.open()]
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_an_interrupted_scan(
    folder: Path, predictor: Predictor, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"r{suffix}"
    full = tmp_path / f"full{suffix}"
    scan_folder(predictor, ScanConfig(folder, output=full))
    lines = full.read_text().splitlines(keepends=True)
    keep = 4 if suffix == ".csv" else 3  # header + 3 rows, or 3 JSON rows
    out.write_text("".join(lines[:keep]) + lines[keep][:25])  # killed in the middle of a line
    result = scan_folder(predictor, ScanConfig(folder, output=out, resume=True))
    assert result.skipped == 3 and result.predicted + result.failed == 5
    prev = read_previous(out, "csv" if suffix == ".csv" else "jsonl", predictor.result_layout)
    assert prev.rows == 8 and len(prev.paths) == 8  # every file exactly once, no half line left
    assert _rows_without_timing(out) == _rows_without_timing(full)
    done = scan_folder(predictor, ScanConfig(folder, output=out, resume=True))
    assert done.skipped == 8 and done.predicted == 0 and done.exit_code == 0


def test_resume_refuses_another_models_file(folder: Path, predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    scan_folder(predictor, ScanConfig(folder, include=("img_00[01].png",), output=out))
    other = Predictor.from_path(make_fused_model(tmp_path / "other.onnx", seed=5))
    with pytest.raises(DataError, match="written by model"):
        scan_folder(other, ScanConfig(folder, output=out, resume=True))
    three = Predictor.from_path(make_fused_model(tmp_path / "three.onnx", classes=("a", "b", "c")))
    with pytest.raises(DataError, match="columns"):
        scan_folder(three, ScanConfig(folder, output=out, resume=True))


def test_unknown_output_suffix_is_refused(folder: Path, predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl"):
        scan_folder(predictor, ScanConfig(folder, output=tmp_path / "r.xlsx"))


def test_scan_of_real_images(shared_data: Path, predictor: Predictor, tmp_path: Path) -> None:
    folder = shared_data / "external-dev"
    result = scan_folder(predictor, ScanConfig(folder, output=tmp_path / "real.csv"))
    assert result.found == len([p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg")])
    assert result.failed == 0 and result.predicted == result.found
