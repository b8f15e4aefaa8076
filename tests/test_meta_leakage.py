"""The meta-learner must never see predictions for images a base model trained on, nor the test split.

Also: prediction files from other splits or manifests, other class orders, a missing member and stale
predictions are refused with a message that names the culprit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from cxr.data.manifest import load_manifest  # noqa: E402
from cxr.errors import ConfigError, DataError  # noqa: E402
from cxr.train.meta import MetaConfig, fit_meta  # noqa: E402
from cxr.train.meta_features import LeakageError, MemberOrderError, check_member_order  # noqa: E402
from cxr.train.meta_oof import FoldRecord, stratified_folds, write_oof  # noqa: E402
from cxr.train.meta_synthetic import SyntheticRun, write_synthetic_run  # noqa: E402
from cxr.train.predictions import PredictionTable, read_predictions, write_predictions  # noqa: E402

MEMBERS = {"alpha": 2.0, "beta": 1.0, "gamma": 1.5}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_synthetic_run(SyntheticRun(tmp_path / "run", members=MEMBERS))


def _pred_dir(run: Path, member: str) -> Path:
    return run / "members" / member / "predictions"


def _rewrite(run: Path, member: str, which: str, **changes: object) -> None:
    t = read_predictions(_pred_dir(run, member) / f"{which}.csv")
    write_predictions(dataclasses.replace(t, **changes), _pred_dir(run, member))


def _cfg(run: Path, **kw: object) -> MetaConfig:
    return MetaConfig(run, cv_folds=3, grid={"C": (0.1, 1.0)}, **kw)  # type: ignore[arg-type]


def _swap_in(run: Path, split_from: str) -> None:
    """Make every member's val predictions contain one image of ``split_from`` instead of a val image."""
    other = load_manifest(run / "manifest.csv", check_files=False).split(split_from)[0]
    for m in MEMBERS:
        t = read_predictions(_pred_dir(run, m) / "val.csv")
        paths = (other.path, *t.paths[1:])
        labels = (other.label, *t.labels[1:])
        write_predictions(dataclasses.replace(t, paths=paths, labels=labels), _pred_dir(run, m))


def test_clean_run_trains(run: Path) -> None:
    res = fit_meta(_cfg(run))
    assert res.n_train == 40 and res.members == ("alpha", "beta", "gamma")


@pytest.mark.parametrize(
    ("split", "words"), [("train", "trained on them"), ("test", "test split must stay untouched")]
)
def test_training_or_test_images_in_the_meta_training_set_are_refused(
    run: Path, split: str, words: str
) -> None:
    _swap_in(run, split)
    with pytest.raises(LeakageError, match=words) as err:
        fit_meta(_cfg(run))
    assert f"from split '{split}'" in err.value.message
    assert not (run / "stack" / "meta.json").exists()


def test_test_split_cannot_be_chosen_as_source(run: Path) -> None:
    with pytest.raises(ConfigError, match="never train or test"):
        MetaConfig(run, source="test")  # type: ignore[arg-type]


def test_prediction_file_of_another_split_is_refused(run: Path) -> None:
    sidecar = _pred_dir(run, "beta") / "val.json"  # a test file copied over the validation one
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "split": "test"}))
    with pytest.raises(DataError, match="member 'beta': val.csv holds predictions for split 'test'"):
        fit_meta(_cfg(run))


def test_prediction_file_of_another_manifest_is_refused(run: Path) -> None:
    for m in MEMBERS:
        _rewrite(run, m, "val", manifest_digest="0123456789abcdef")
    with pytest.raises(DataError, match="manifest 0123456789abcdef"):
        fit_meta(_cfg(run))


def test_members_with_different_manifests_are_refused(run: Path) -> None:
    _rewrite(run, "gamma", "val", manifest_digest="0123456789abcdef")
    with pytest.raises(DataError, match="member 'gamma' has manifest"):
        fit_meta(_cfg(run))


def test_member_with_another_class_order_is_refused(run: Path) -> None:
    t = read_predictions(_pred_dir(run, "beta") / "val.csv")
    order = (1, 0, 2, 3)
    _rewrite(run, "beta", "val", classes=tuple(t.classes[i] for i in order), probs=t.probs[:, order])
    with pytest.raises(DataError, match="member 'beta' has class order"):
        fit_meta(_cfg(run))


def test_missing_member_is_named(run: Path) -> None:
    with pytest.raises(DataError, match="member\\(s\\) delta have no val predictions"):
        fit_meta(_cfg(run, members=("alpha", "delta")))


def test_predictions_from_another_checkpoint_are_refused(run: Path) -> None:
    best = run / "members" / "alpha" / "best.json"
    info = json.loads(best.read_text())
    info["sha256"] = "f" * 64
    best.write_text(json.dumps(info))
    with pytest.raises(DataError, match="member 'alpha': its val predictions come from checkpoint"):
        fit_meta(_cfg(run))


@pytest.mark.parametrize(
    ("expected", "given", "words"),
    [
        (("a", "b", "c"), ("a", "c", "b"), "position 1: 'c' where 'b' belongs"),
        (("a", "b", "c"), ("a", "b"), "member\\(s\\) c missing"),
        (("a", "b"), ("a", "b", "z"), "z unknown to the meta-learner"),
    ],
)
def test_member_order_check_names_the_difference(expected: tuple, given: tuple, words: str) -> None:
    with pytest.raises(MemberOrderError, match=words):
        check_member_order(expected, given)
    check_member_order(expected, expected)


# --- out-of-fold predictions -------------------------------------------------------------------------------


def _write_oof(run: Path, *, leak: bool = False, drop_folds: bool = False) -> None:
    manifest = load_manifest(run / "manifest.csv", check_files=False)
    train = manifest.split("train")
    paths = [r.path for r in train]
    labels = [r.label for r in train]
    fold_of = stratified_folds(paths, labels, 3, rng=np.random.default_rng(0))
    trained = tuple(frozenset(p for p in paths if fold_of[p] != f) for f in range(3))
    if leak:  # the fold-0 model also trained on one of its own held-out images
        victim = next(p for p in paths if fold_of[p] == 0)
        trained = (trained[0] | {victim}, *trained[1:])
    rng = np.random.default_rng(1)
    for m in MEMBERS:
        y = np.array([manifest.classes.index(lab) for lab in labels])
        logits = rng.normal(size=(len(y), 4)) + 2 * np.eye(4)[y]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        sha = read_predictions(_pred_dir(run, m) / "val.csv").checkpoint_sha256
        table = PredictionTable(
            m, "oof", manifest.digest(), manifest.classes, tuple(paths), tuple(labels), probs, sha
        )
        write_oof(table, FoldRecord(m, manifest.digest(), 3, fold_of, trained), _pred_dir(run, m))
        if drop_folds:
            (_pred_dir(run, m) / "oof.folds.json").unlink()


def test_out_of_fold_predictions_train_the_meta_learner(run: Path) -> None:
    _write_oof(run)
    res = fit_meta(_cfg(run, source="oof"))
    assert res.n_train == 48  # 12 training images per class
    assert json.loads(res.meta_json.read_text())["source"] == "oof"


def test_out_of_fold_row_predicted_by_a_model_that_trained_on_it_is_refused(run: Path) -> None:
    _write_oof(run, leak=True)
    with pytest.raises(LeakageError, match="was predicted by the fold-0 model, which trained on it"):
        fit_meta(_cfg(run, source="oof"))


def test_out_of_fold_predictions_without_fold_record_are_refused(run: Path) -> None:
    _write_oof(run, drop_folds=True)
    with pytest.raises(LeakageError, match="nothing proves"):
        fit_meta(_cfg(run, source="oof"))


def test_stratified_folds_spread_classes() -> None:
    paths = [f"p{i}" for i in range(30)]
    labels = ["a"] * 15 + ["b"] * 15
    folds = stratified_folds(paths, labels, 3, rng=np.random.default_rng(0))
    for lab in "ab":
        counts = np.bincount([folds[p] for p, x in zip(paths, labels, strict=True) if x == lab], minlength=3)
        assert counts.tolist() == [5, 5, 5]
