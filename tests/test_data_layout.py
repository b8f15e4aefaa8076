"""Both Kaggle folder layouts, and bad data-set folders with messages that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.data.layout import KAGGLE_FOLDER, scan_dataset
from cxr.errors import DataError
from cxr.labels import CLASSES
from tests.dataset_factory import make_dataset


@pytest.mark.parametrize("layout", ["kaggle_v4", "flat"])
def test_scan_finds_every_image_with_its_class(tmp_path: Path, layout: str) -> None:
    root = make_dataset(
        tmp_path / "ds",
        counts={"COVID": 3, "Lung_Opacity": 2, "Normal": 4, "Viral Pneumonia": 1},
        layout=layout,
    )
    scan = scan_dataset(root)
    assert scan.layout == layout
    got = {c: sum(r.label == c for r in scan.records) for c in CLASSES}
    assert got == {"COVID": 3, "Lung_Opacity": 2, "Normal": 4, "Viral Pneumonia": 1}
    assert all(r.path.parent.name == ("images" if layout == "kaggle_v4" else r.label) for r in scan.records)


def test_kaggle_parent_folder_and_ignored_extras(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / KAGGLE_FOLDER, counts=2)
    (root / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04 not really")
    (root / "README.md.txt").write_text("readme")
    (root / "COVID" / "masks" / "COVID-1.png").write_bytes(b"mask, not scanned")
    (root / "Normal" / "images" / "notes.txt").write_text("hello")
    scan = scan_dataset(tmp_path)  # the parent of COVID-19_Radiography_Dataset works too
    assert scan.root == root
    assert len(scan.records) == 8
    assert [p.name for p, _ in scan.skipped] == ["notes.txt"]
    assert "not an image file" in scan.skipped[0][1]


def test_misnamed_class_folder_gets_did_you_mean(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", counts=1)
    (root / "Viral Pneumonia").rename(root / "Viral_Pneumonia")
    with pytest.raises(DataError) as e:
        scan_dataset(root)
    assert "Viral Pneumonia" in e.value.message and "rename it" in e.value.message
    assert "Viral_Pneumonia" in e.value.message


@pytest.mark.parametrize("case", ["missing_dir", "file_not_dir", "empty"])
def test_bad_dataset_paths(tmp_path: Path, case: str) -> None:
    if case == "missing_dir":
        target = tmp_path / "nope"
    elif case == "file_not_dir":
        target = tmp_path / "file.txt"
        target.write_text("x")
    else:
        target = make_dataset(tmp_path / "ds", counts=0)
    with pytest.raises(DataError) as e:
        scan_dataset(target)
    assert str(target.name) in e.value.message
    if case == "missing_dir":
        assert e.value.hint and "cxr data synth" in e.value.hint
