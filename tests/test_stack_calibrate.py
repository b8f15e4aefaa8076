"""Calibrated confidence: the temperature, the operating points, and how results carry them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from cxr.calibration import apply_temperature
from cxr.errors import ConfigError, ModelError
from cxr.runtime.operating import operating_thresholds
from cxr.stack.calibrate import MIN_CALIBRATION_PREDICTIONS, check_targets, fit_temperature, operating_points
from tests.onnx_factory import make_fused_model, write_gray_pngs

CLASSES = ("a", "b", "c")


def test_temperature_formula_on_known_values() -> None:
    p = np.array([[0.8, 0.2, 0.0]])
    # softmax(log p / 2) = sqrt(p) normalised: sqrt(.8) : sqrt(.2) = 2 : 1; a zero stays zero
    np.testing.assert_allclose(apply_temperature(p, 2.0), [[2 / 3, 1 / 3, 0.0]])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_fit_recovers_the_temperature_that_miscalibrated_the_scores(true_t: float) -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, size=(4000, 3))
    y = np.array([rng.choice(3, p=q) for q in softmax(z, axis=1)])  # labels drawn from softmax(z)
    t = fit_temperature(y, softmax(z * true_t, axis=1))  # scores sharpened (or flattened) by true_t
    assert t.temperature == pytest.approx(true_t, rel=0.12)
    assert t.nll_after < t.nll_before
    assert t.ece_after is not None and t.ece_before is not None and t.ece_after < t.ece_before


def test_nothing_to_fit_keeps_temperature_one() -> None:
    t = fit_temperature(np.zeros(5, dtype=np.int64), np.full((5, 3), 1 / 3), minimum=2)  # one class
    assert t.temperature == 1.0 and t.skipped is None


def test_operating_point_is_the_highest_threshold_reaching_the_target() -> None:
    # class a: 20 positives scored 0.99, 0.98, ..., 0.80; 4 negatives at 0.95, 0.85, 0.5, 0.1
    pos = 1.0 - np.arange(1, 21) / 100
    neg = np.array([0.95, 0.85, 0.5, 0.1])
    pa = np.concatenate([pos, neg])
    probs = np.stack([pa, (1 - pa) / 2, (1 - pa) / 2], axis=1)
    y = np.array([0] * 20 + [1] * 4)
    op = operating_points(y, probs, CLASSES, {"a": 0.95})["a"]
    assert op.threshold == pytest.approx(0.81)  # ceil(0.95 * 20) = 19th highest positive
    assert op.sensitivity == pytest.approx(19 / 20)
    assert op.specificity == pytest.approx(2 / 4)  # 0.95 and 0.85 are above 0.81
    assert (op.n_positive, op.n_negative) == (20, 4)
    assert operating_points(y, probs, CLASSES, {"a": 1.0})["a"].threshold == pytest.approx(0.80)
    assert "c" not in operating_points(y, probs, CLASSES, {"c": 0.9})  # no positive: no point


@pytest.mark.parametrize(("targets", "match"), [({"z": 0.9}, "unknown class 'z'"), ({"a": 1.5}, "outside")])
def test_bad_targets_are_refused_by_name(targets: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_targets(targets, CLASSES)


def test_thresholds_from_the_card() -> None:
    card = {"operating_points": {"a": {"threshold": 0.3, "target_sensitivity": 0.95}}}
    assert operating_thresholds(card, CLASSES) == {"a": 0.3}
    assert operating_thresholds({}, CLASSES) == {}


@pytest.mark.parametrize(
    "points",
    [{"z": {"threshold": 0.5}}, {"a": {"threshold": "high"}}, {"a": {"threshold": float("nan")}}, [1]],
)
def test_malformed_operating_points_are_refused(points: object) -> None:
    with pytest.raises(ModelError, match="operating"):
        operating_thresholds({"operating_points": points}, CLASSES, "m.onnx")


def test_predictions_and_result_rows_carry_the_flags(tmp_path: Path) -> None:
    from cxr.labels import CLASSES as MODEL_CLASSES
    from cxr.runtime.predictor import Predictor
    from cxr.runtime.results import csv_columns, csv_row

    first, last = MODEL_CLASSES[0], MODEL_CLASSES[-1]
    points = {first: {"threshold": 0.0}, last: {"threshold": 1.5}}  # always reached / never reached
    model = make_fused_model(tmp_path / "m.onnx", card_extra={"operating_points": points})
    predictor = Predictor.from_path(model)
    preds = predictor.predict(write_gray_pngs(tmp_path / "png", 2))
    assert [p.above_operating_point for p in preds] == [{first: True, last: False}] * 2
    row = dict(zip(csv_columns(MODEL_CLASSES), csv_row(preds[0], MODEL_CLASSES), strict=True))
    assert row["above_operating_point"] == first
    assert json.loads(json.dumps(preds[0].to_dict()))["above_operating_point"] == {
        first: True,
        last: False,
    }
    plain = Predictor.from_path(make_fused_model(tmp_path / "plain.onnx")).predict(
        write_gray_pngs(tmp_path / "p2", 1)
    )
    assert plain[0].above_operating_point is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("COVID=0.95", {"COVID": 0.95}),
        ("COVID=0.9, Viral Pneumonia=0.8", {"COVID": 0.9, "Viral Pneumonia": 0.8}),
    ],
)
def test_target_option_parses(text: str, expected: dict[str, float]) -> None:
    from cxr.cli.stack import parse_targets

    assert parse_targets(text) == expected


@pytest.mark.parametrize("text", ["COVID", "COVID=high", "=0.9"])
def test_target_option_refuses_malformed_items(text: str) -> None:
    from cxr.cli.stack import parse_targets

    with pytest.raises(ConfigError, match="CLASS=SENSITIVITY"):
        parse_targets(text)


def test_cxr_stack_fits_and_reports_calibration_and_operating_points(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from typer.testing import CliRunner

    from cxr.cli.main import app
    from cxr.labels import CLASSES
    from tests.run_factory import SyntheticRun, write_synthetic_run

    run = write_synthetic_run(SyntheticRun(tmp_path / "run", per_class={c: (12, 25, 10) for c in CLASSES}))
    res = CliRunner().invoke(app, ["stack", str(run), "--target-sensitivity", "COVID=0.9"])
    assert res.exit_code == 0, res.output
    assert "calibration: temperature" in res.output and "operating point COVID: p >= " in res.output
    meta = json.loads((run / "stack" / "meta.json").read_text())
    assert list(meta["operating_points"]) == ["COVID"]
    assert meta["operating_points"]["COVID"]["val_sensitivity"] >= 0.9
    bad = CliRunner().invoke(app, ["stack", str(run), "--target-sensitivity", "Knee=0.9"])
    assert bad.exit_code != 0 and "unknown class 'Knee'" in bad.output


@pytest.mark.parametrize(
    ("n", "fitted"), [(MIN_CALIBRATION_PREDICTIONS - 1, False), (MIN_CALIBRATION_PREDICTIONS, True)]
)
def test_temperature_is_not_fitted_below_the_minimum(n: int, fitted: bool) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += 1.0
    t = fit_temperature(y, softmax(z * 4.0, axis=1))  # over-confident: the fit would lower the confidence
    assert (t.temperature != 1.0) is fitted and (t.skipped is None) is fitted
    record = t.to_dict()
    if fitted:
        assert record["method"] == "temperature" and "skipped" not in record and t.nll_after < t.nll_before
    else:
        assert record == {**record, "method": "none", "temperature": 1.0, "n": n}
        assert record["skipped"] == f"calibration skipped: {n} validation predictions < minimum 100"
        assert t.nll_after == t.nll_before


def test_stack_below_the_minimum_keeps_t_1_and_says_why(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from cxr.stack.stack import MetaConfig, fit_meta, load_meta_estimator
    from tests.run_factory import SyntheticRun, write_synthetic_run

    run = write_synthetic_run(SyntheticRun(tmp_path / "run"))  # 4 classes x 10 validation images
    res = fit_meta(MetaConfig(run, cv_folds=3))
    why = f"calibration skipped: 40 validation predictions < minimum {MIN_CALIBRATION_PREDICTIONS}"
    _, meta = load_meta_estimator(res.stack_dir)
    assert meta["calibration"]["skipped"] == why and meta["calibration"]["temperature"] == 1.0
    assert why in res.warnings
    lowered = fit_meta(
        MetaConfig(run, cv_folds=3, out_dir=tmp_path / "lowered", min_calibration_predictions=40)
    )
    assert json.loads(lowered.meta_json.read_text())["calibration"]["method"] == "temperature"
    with pytest.raises(ConfigError, match="min_calibration_predictions"):
        MetaConfig(run, min_calibration_predictions=1)
