"""`cxr evaluate-folds`: pooled accuracy and McNemar by hand, overlapping or mixed folds refused, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxr.cli.main import app
from cxr.errors import ConfigError, DataError
from cxr.evaluate.methods import read_table, table_path, write_table
from cxr.evaluate.pooled import PoolConfig, pool_folds
from cxr.labels import CLASSES, NOTICE

# Two folds of 4 and 3 images. Truth, then what each method predicted (class indices into CLASSES).
FOLDS = {
    0: {
        "y": [0, 2, 3, 0],
        "stacking": [0, 2, 3, 0],
        "member:a": [0, 2, 3, 2],
        "member:b": [2, 2, 3, 2],
        "soft_vote": [0, 2, 0, 0],
        "baseline:linear_probe": [0, 0, 3, 2],
    },
    1: {
        "y": [2, 3, 0],
        "stacking": [2, 3, 2],
        "member:a": [0, 3, 2],
        "member:b": [2, 3, 0],
        "soft_vote": [2, 3, 0],
        "baseline:linear_probe": [2, 0, 2],
    },
}
BEST = {0: "a", 1: "b"}  # each fold's best member on its validation split


def _fold_dir(root: Path, i: int, paths: list[str] | None = None, seed: int = 0, folds: int = 2) -> Path:
    run = root / f"fold{i}"
    (run / "eval").mkdir(parents=True)
    f = FOLDS[i]
    paths = paths or [f"{i}/img{j}.png" for j in range(len(f["y"]))]
    preds = {k: np.array(v) for k, v in f.items() if k != "y"}
    write_table(table_path(run / "eval", "test"), paths, np.array(f["y"]), preds, CLASSES)
    (run / "eval" / "report.json").write_text(
        json.dumps({"classes": list(CLASSES), "best_member": {"name": BEST[i], "rule": "val"}})
    )
    (run / "manifest.json").write_text(json.dumps({"root": "/data", "seed": seed, "folds": folds, "fold": i}))
    return run


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, ...]:
    return tuple(_fold_dir(tmp_path, i) for i in FOLDS)


def test_pooled_accuracy_and_mcnemar_match_a_hand_count(runs: tuple[Path, ...], tmp_path: Path) -> None:
    res = pool_folds(PoolConfig(runs, tmp_path / "pooled", n_bootstrap=50))
    assert res.n == 7
    assert res.method("stacking").accuracy == pytest.approx(6 / 7)
    assert res.method("stacking").per_fold_accuracy == pytest.approx((1.0, 2 / 3))
    assert res.method("baseline:linear_probe").accuracy == pytest.approx(3 / 7)
    # best member per fold: fold 0 uses a (3/4 right), fold 1 uses b (3/3 right)
    assert res.method("best_member").accuracy == pytest.approx(6 / 7)
    probe = res.tests["stacking_vs_linear_probe"]
    assert (probe.a_only, probe.b_only, probe.method) == (3, 0, "exact binomial")
    assert probe.p_value == pytest.approx(0.25)
    best = res.tests["stacking_vs_best_member"]
    assert (best.a_only, best.b_only) == (1, 1)
    # each member alone vs the probe, counted by hand: b alone right on 3, the probe alone on 1
    member_b, member_a = res.member_tests["b_vs_linear_probe"], res.member_tests["a_vs_linear_probe"]
    assert (member_b.a_only, member_b.b_only) == (3, 1)
    assert (member_a.a_only, member_a.b_only) == (2, 1)
    assert "Each member alone against the baseline" in res.report_md.read_text()
    lo, hi = res.method("stacking").accuracy_ci.low, res.method("stacking").accuracy_ci.high
    assert lo is not None and hi is not None and lo <= 6 / 7 <= hi
    report = json.loads(res.report_json.read_text())
    assert report["n"] == 7 and report["methods"]["stacking"]["per_fold_accuracy"] == pytest.approx(
        [1.0, 2 / 3]
    )
    assert NOTICE in res.report_md.read_text() and not res.warnings


def test_overlapping_test_splits_are_refused(tmp_path: Path) -> None:
    a = _fold_dir(tmp_path, 0, paths=["x.png", "y.png", "z.png", "w.png"])
    b = _fold_dir(tmp_path, 1, paths=["q.png", "x.png", "r.png"])
    with pytest.raises(DataError, match=r"x\.png is in the test split of both"):
        pool_folds(PoolConfig((a, b), tmp_path / "out"))


@pytest.mark.parametrize(("seed", "folds"), [(1, 2), (0, 3)])
def test_folds_of_two_different_splits_are_refused(tmp_path: Path, seed: int, folds: int) -> None:
    a = _fold_dir(tmp_path, 0)
    b = _fold_dir(tmp_path, 1, seed=seed, folds=folds)
    with pytest.raises(DataError, match="differ in their split's"):
        pool_folds(PoolConfig((a, b), tmp_path / "out"))


def test_a_missing_fold_is_named(tmp_path: Path) -> None:
    a = _fold_dir(tmp_path, 0, folds=3)
    b = _fold_dir(tmp_path, 1, folds=3)
    res = pool_folds(PoolConfig((a, b), tmp_path / "out", n_bootstrap=0))
    assert res.warnings == ("folds [2] of 3 are not pooled: not every image is tested",)


def test_one_run_is_not_a_pool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 folds"):
        PoolConfig((tmp_path,), tmp_path / "out")


def test_a_fold_without_its_table_says_what_to_run(runs: tuple[Path, ...], tmp_path: Path) -> None:
    table_path(runs[1] / "eval", "test").unlink()
    with pytest.raises(DataError, match="cxr evaluate RUN_DIR"):
        pool_folds(PoolConfig(runs, tmp_path / "out"))


def test_table_round_trip_and_unknown_class(tmp_path: Path) -> None:
    p = write_table(
        tmp_path / "t.csv", ["a.png", "b.png"], np.array([0, 3]), {"stacking": np.array([2, 3])}, CLASSES
    )
    t = read_table(p, CLASSES)
    assert t.paths == ("a.png", "b.png") and t.labels.tolist() == [0, 3]
    assert t.predictions["stacking"].tolist() == [2, 3]
    p.write_text(p.read_text().replace("Normal", "Sarcoidosis"))
    with pytest.raises(DataError, match="Sarcoidosis"):
        read_table(p, CLASSES)


def test_cli_pools_and_prints_the_tests(runs: tuple[Path, ...], tmp_path: Path) -> None:
    out = CliRunner().invoke(
        app, ["evaluate-folds", *map(str, runs), "--output", str(tmp_path / "p"), "--bootstrap", "20"]
    )
    assert out.exit_code == 0, out.output
    assert "2 folds, 7 test images pooled" in out.output
    assert "stacking vs linear_probe: stacking alone right on 3, linear_probe alone on 0" in out.output
    assert "b vs linear_probe: b alone right on 3, linear_probe alone on 1" in out.output
    assert (tmp_path / "p" / "report.md").is_file()
    bad = CliRunner().invoke(app, ["evaluate-folds", str(runs[0]), str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
