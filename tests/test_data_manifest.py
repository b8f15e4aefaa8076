"""The split manifest: determinism, stratification, no leakage, duplicates, rare classes, staleness."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr.data.manifest import SPLITS, SplitConfig, build_manifest, format_counts, load_manifest, split_sizes
from cxr.errors import DataError
from cxr.labels import CLASSES
from tests.dataset_factory import make_dataset, write_png


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_dataset(
        tmp_path / "ds", counts={"COVID": 20, "Lung_Opacity": 30, "Normal": 50, "Viral Pneumonia": 10}
    )


def _split(ds: Path, out: Path, seed: int = 0):
    return build_manifest(SplitConfig(data_dir=ds, out=out, seed=seed))


def test_same_inputs_and_seed_give_the_same_manifest(dataset: Path, tmp_path: Path) -> None:
    a = _split(dataset, tmp_path / "a.csv")
    b = _split(dataset, tmp_path / "b.csv")
    c = _split(dataset, tmp_path / "c.csv", seed=1)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert a.manifest.digest() == b.manifest.digest() != c.manifest.digest()


def test_split_is_stratified_80_10_10(dataset: Path, tmp_path: Path) -> None:
    counts = _split(dataset, tmp_path / "m.csv").manifest.counts()
    assert counts["train"] == {"COVID": 16, "Lung_Opacity": 24, "Normal": 40, "Viral Pneumonia": 8}
    assert counts["val"] == {"COVID": 2, "Lung_Opacity": 3, "Normal": 5, "Viral Pneumonia": 1}
    assert counts["test"] == counts["val"]


def test_no_image_and_no_pixel_content_in_two_splits(dataset: Path, tmp_path: Path) -> None:
    # add a same-class duplicate (different name, same pixels): it must be dropped, not split apart
    shutil.copy(dataset / "Normal/images/Normal-1.png", dataset / "Normal/images/Normal-copy.png")
    res = _split(dataset, tmp_path / "m.csv")
    m = res.manifest
    by_split = {s: {r.path for r in m.split(s)} for s in SPLITS}
    hashes = {s: {r.sha256 for r in m.split(s)} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not by_split[a] & by_split[b]
                assert not hashes[a] & hashes[b]
    assert res.duplicates == (("Normal/images/Normal-copy.png", "Normal/images/Normal-1.png"),)
    assert len(m.rows) == 110


def test_cross_class_duplicates_are_label_conflicts_and_excluded(dataset: Path, tmp_path: Path) -> None:
    shutil.copy(dataset / "COVID/images/COVID-1.png", dataset / "Normal/images/Normal-x.png")
    res = _split(dataset, tmp_path / "m.csv")
    assert {c[0] for c in res.conflicts} == {"COVID/images/COVID-1.png", "Normal/images/Normal-x.png"}
    paths = {r.path for r in res.manifest.rows}
    assert "COVID/images/COVID-1.png" not in paths and "Normal/images/Normal-x.png" not in paths


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0, 0)), (2, (2, 0, 0)), (9, (9, 0, 0)), (10, (8, 1, 1)), (3616, (2894, 361, 361))],
)
def test_rare_classes_fill_train_first(n: int, expected: tuple[int, int, int]) -> None:
    assert split_sizes(n, (0.8, 0.1, 0.1)) == expected


def test_rare_class_warns_and_names_the_split(tmp_path: Path) -> None:
    ds = make_dataset(
        tmp_path / "ds", counts={"COVID": 10, "Lung_Opacity": 1, "Normal": 10, "Viral Pneumonia": 10}
    )
    res = _split(ds, tmp_path / "m.csv")
    assert "split 'val' has no image of class 'Lung_Opacity'" in res.warnings
    assert "split 'test' has no image of class 'Lung_Opacity'" in res.warnings
    assert res.manifest.counts()["train"]["Lung_Opacity"] == 1


@pytest.mark.parametrize("bad", ["truncated", "zero_bytes", "text_as_png"])
def test_corrupt_files_are_reported_and_skipped(dataset: Path, tmp_path: Path, bad: str) -> None:
    target = dataset / "COVID/images/COVID-bad.png"
    if bad == "truncated":
        good = write_png(tmp_path / "g.png", seed=99)
        target.write_bytes(good.read_bytes()[:60])
    elif bad == "zero_bytes":
        target.write_bytes(b"")
    else:
        target.write_text("this is not a png")
    res = _split(dataset, tmp_path / "m.csv")
    assert [p for p, _ in res.skipped] == [str(target)]
    assert len(res.manifest.rows) == 110


def test_manifest_round_trip_and_staleness(dataset: Path, tmp_path: Path) -> None:
    res = _split(dataset, tmp_path / "m.csv")
    loaded = load_manifest(tmp_path / "m.csv")
    assert loaded.rows == res.manifest.rows and loaded.digest() == res.manifest.digest()
    (dataset / loaded.rows[0].path).unlink()
    with pytest.raises(DataError) as e:
        load_manifest(tmp_path / "m.csv")
    assert "no longer matches" in e.value.message and "1 of 110" in e.value.message
    assert e.value.hint and "cxr data split" in e.value.hint


def test_not_a_manifest(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a cxr manifest"):
        load_manifest(p)
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "missing.csv")


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (0.9, -0.1, 0.2), (0.5, 0.5)])
def test_bad_fractions(tmp_path: Path, fractions: tuple[float, ...]) -> None:
    with pytest.raises(DataError, match="fractions"):
        SplitConfig(data_dir=tmp_path, out=tmp_path / "m.csv", fractions=fractions)  # type: ignore[arg-type]


def test_classes_constant_matches_kaggle_folders() -> None:
    assert CLASSES == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@pytest.mark.parametrize("blend", [0.0, 0.2])
def test_an_optional_blend_split_comes_out_of_train(dataset: Path, tmp_path: Path, blend: float) -> None:
    plain = build_manifest(SplitConfig(dataset, tmp_path / "a.csv", seed=0)).manifest
    res = build_manifest(SplitConfig(dataset, tmp_path / "b.csv", seed=0, blend=blend)).manifest
    by_split = {s: {r.path for r in res.split(s)} for s in res.splits()}
    assert ("blend" in res.splits()) == (blend > 0)
    assert {r.path for r in res.split("val")} == {
        r.path for r in plain.split("val")
    }  # val and test unchanged
    assert {r.path for r in res.split("test")} == {r.path for r in plain.split("test")}
    if blend:
        assert by_split["blend"] and not by_split["blend"] & by_split["train"]
        assert by_split["blend"] | by_split["train"] == {r.path for r in plain.split("train")}
        assert "blend" in format_counts(res).splitlines()[0]
    else:
        assert "blend" not in format_counts(res)
