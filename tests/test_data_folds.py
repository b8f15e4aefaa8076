"""Cross-validation manifests: every image tested once, the last fold equals the plain split, bad folds refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.data.manifest import SplitConfig, build_manifest, held_out_block
from cxr.errors import DataError
from tests.dataset_factory import make_dataset

COUNTS = {"COVID": 23, "Lung_Opacity": 3, "Normal": 41, "Viral Pneumonia": 10}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("folds") / "ds", counts=COUNTS)


def _fold(ds: Path, out: Path, folds: int, fold: int, seed: int = 0):
    cfg = SplitConfig(ds, out, seed=seed, fractions=(0.9 - 1 / folds, 0.1, 1 / folds), folds=folds, fold=fold)
    return build_manifest(cfg).manifest


@pytest.mark.parametrize(("folds", "seed"), [(5, 0), (3, 7)])
def test_every_image_is_tested_in_exactly_one_fold(
    dataset: Path, tmp_path: Path, folds: int, seed: int
) -> None:
    manifests = [_fold(dataset, tmp_path / f"f{i}.csv", folds, i, seed) for i in range(folds)]
    tested = [r.path for m in manifests for r in m.split("test")]
    everything = {r.path for r in manifests[0].rows}
    rare = {r.path for r in manifests[0].rows if r.label == "Lung_Opacity"}  # 3 images < K=5: never tested
    assert len(tested) == len(set(tested))  # no image in two test folds
    assert set(tested) == (everything - rare if folds > 3 else everything)
    for m in manifests:
        assert {r.path for r in m.rows} == everything
        splits = {s: {r.path for r in m.split(s)} for s in m.splits()}
        assert not splits["train"] & splits["val"] and not splits["val"] & splits["test"]
        assert not splits["train"] & splits["test"]
        assert m.counts()["val"]["Normal"] == 4  # floor(41 * 0.1) in every fold


def test_fold_sizes_differ_by_at_most_one_per_class(dataset: Path, tmp_path: Path) -> None:
    sizes = [_fold(dataset, tmp_path / f"f{i}.csv", 5, i).counts()["test"]["Normal"] for i in range(5)]
    assert sum(sizes) == 41 and max(sizes) - min(sizes) <= 1


def test_the_last_fold_is_the_plain_split(dataset: Path, tmp_path: Path) -> None:
    plain = build_manifest(
        SplitConfig(dataset, tmp_path / "p.csv", seed=3, fractions=(0.7, 0.1, 0.2))
    ).manifest
    last = _fold(dataset, tmp_path / "l.csv", 5, 4, seed=3)
    first = _fold(dataset, tmp_path / "z.csv", 5, 0, seed=3)
    assert [(r.path, r.split) for r in last.rows] == [(r.path, r.split) for r in plain.rows]
    assert {r.path for r in first.split("test")} != {r.path for r in plain.split("test")}


@pytest.mark.parametrize(
    ("n", "n_test", "folds", "blocks"),
    [
        (10, 2, 5, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]),
        (11, 2, 5, [(0, 2), (2, 4), (4, 6), (6, 9), (9, 11)]),
        (4, 0, 5, [(4, 4)] * 5),
    ],
)
def test_held_out_blocks_partition_the_order(n: int, n_test: int, folds: int, blocks: list) -> None:
    assert [held_out_block(n, n_test, folds, i) for i in range(folds)] == blocks


@pytest.mark.parametrize(
    ("folds", "fold", "test", "match"),
    [
        (1, 0, 0.5, "2 or more"),
        (5, 5, 0.2, "not one of 0..4"),
        (5, -1, 0.2, "not one of"),
        (5, 0, 0.1, "1/5"),
        (0, 2, 0.1, "without folds"),
    ],
)
def test_bad_folds_are_refused(tmp_path: Path, folds: int, fold: int, test: float, match: str) -> None:
    with pytest.raises(DataError, match=match):
        SplitConfig(tmp_path, tmp_path / "m.csv", fractions=(0.9 - test, 0.1, test), folds=folds, fold=fold)
