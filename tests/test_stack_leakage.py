"""The meta-learner must never see predictions for images a base model trained on, nor the test split.

Also: prediction files from other splits or manifests, other class orders, a missing member and stale
predictions are refused with a message that names the culprit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from cxr.data.manifest import load_manifest  # noqa: E402
from cxr.errors import ConfigError, DataError  # noqa: E402
from cxr.stack.features import LeakageError, MemberOrderError, check_member_order  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta  # noqa: E402
from cxr.train.predictions import read_predictions, write_predictions  # noqa: E402
from tests.run_factory import SyntheticRun, write_synthetic_run  # noqa: E402

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


def test_only_validation_predictions_train_the_meta_learner(run: Path) -> None:
    """``oof`` was offered without anything producing it: it is gone, and any other source is refused."""
    with pytest.raises(ConfigError, match="source 'oof' is not allowed"):
        _cfg(run, source="oof")


@pytest.mark.parametrize(
    ("precision", "refused"), [("bf16", True), ("fp16", True), ("fp32", False), ("", False)]
)
def test_reduced_precision_predictions_never_train_the_meta_learner(
    run: Path, precision: str, refused: bool
) -> None:
    """bf16 probabilities differ from what the FP32 graph ships; older files ('' : unknown) still load."""
    _rewrite(run, "beta", "val", precision=precision)
    if refused:
        with pytest.raises(DataError, match=f"beta \\({precision}\\) were computed in reduced precision"):
            fit_meta(_cfg(run))
    else:
        assert fit_meta(_cfg(run)).n_train > 0


def test_a_separate_blend_split_trains_the_meta_learner(tmp_path: Path) -> None:
    """`cxr data split --blend`: the meta-learner learns on images neither training nor early stopping saw."""
    run = write_synthetic_run(SyntheticRun(tmp_path / "run", members=MEMBERS, blend_per_class=6))
    res = fit_meta(_cfg(run, source="blend"))
    assert res.n_train == 24 and json.loads(res.meta_json.read_text())["source"] == "blend"
    for m in MEMBERS:  # every member's blend predictions now hold one validation image
        paths = read_predictions(_pred_dir(run, m) / "blend.csv").paths
        _rewrite(run, m, "blend", paths=("COVID/images/COVID-val-0.png", *paths[1:]))
    with pytest.raises(LeakageError, match="from split 'val'"):
        fit_meta(_cfg(run, source="blend"))


def test_blend_source_without_a_blend_split_says_how_to_make_one(run: Path) -> None:
    with pytest.raises(DataError, match="no blend split") as info:
        fit_meta(_cfg(run, source="blend"))
    assert info.value.hint is not None and "--blend" in info.value.hint
