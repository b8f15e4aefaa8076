"""`cxr evaluate` with a calibrated meta-learner: before/after rows, operating points on test, older files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from cxr.calibration import expected_calibration_error  # noqa: E402
from cxr.errors import ModelError  # noqa: E402
from cxr.evaluate import EvalConfig, evaluate  # noqa: E402
from cxr.evaluate.calibration_check import operating_point, operating_points, temperature_of  # noqa: E402
from cxr.evaluate.stats import wilson_interval  # noqa: E402
from cxr.labels import CLASSES  # noqa: E402
from cxr.spec import META_STACK  # noqa: E402
from cxr.stack.features import load_split  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta, load_meta_estimator  # noqa: E402
from tests.run_factory import SyntheticRun, write_synthetic_run  # noqa: E402

MEMBERS = ("alpha", "beta", "delta", "epsilon", "gamma")  # the synthetic run's members, sorted
Z95 = 1.959963984540054  # the 97.5% normal quantile


def _softmax_log(p: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / t), written out here (not the library's helper)."""
    z = np.log(p) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory):
    per_class = {c: (12, 25, 10) for c in CLASSES}  # 100 validation predictions: the minimum to fit T on
    run = write_synthetic_run(SyntheticRun(tmp_path_factory.mktemp("cal") / "run", per_class=per_class))
    fit_meta(MetaConfig(run, cv_folds=3, grid={"C": (10.0,)}))
    meta = json.loads((run / "stack" / "meta.json").read_text())
    assert meta["calibration"]["method"] == "temperature"
    assert abs(meta["calibration"]["temperature"] - 1.0) > 1e-3, "the fixture needs a temperature != 1"
    return run, meta, evaluate(EvalConfig(run, n_bootstrap=20))


def test_uncalibrated_row_is_the_estimators_own_probabilities(calibrated) -> None:
    run, meta, res = calibrated
    t = meta["calibration"]["temperature"]
    est, _ = load_meta_estimator(run / "stack")
    data = load_split(run, MEMBERS, "test")
    k = len(data.classes)
    raw = np.zeros((data.labels.size, k))
    raw[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(data.features)
    y = data.labels
    row = res.method("stacking_uncalibrated")
    assert row.kind == "reference" and row.name == "stacking (before calibration)"
    assert np.allclose(row.confidence, raw.max(axis=1), atol=1e-6)
    assert np.array_equal(row.predictions, res.method("stacking").predictions)
    cal = _softmax_log(raw, t)
    assert np.allclose(res.method("stacking").confidence, cal.max(axis=1), atol=1e-6)
    report = json.loads(res.report_json.read_text())
    c = report["calibration"]
    assert c["temperature"] == pytest.approx(t) and c["split"] == "test" and c["n"] == y.size
    assert c["val_ece_before"] == meta["calibration"]["ece_before"]
    assert c["val_ece_after"] == meta["calibration"]["ece_after"]
    assert c["val_nll_after"] == meta["calibration"]["nll_after"]
    idx = np.arange(y.size)
    assert c["nll_before"] == pytest.approx(-np.mean(np.log(raw[idx, y])), rel=1e-6)
    assert c["nll_after"] == pytest.approx(-np.mean(np.log(cal[idx, y])), rel=1e-6)
    assert c["ece_before"] == pytest.approx(
        expected_calibration_error(raw.max(axis=1), raw.argmax(axis=1) == y)
    )
    assert c["ece_after"] == pytest.approx(
        expected_calibration_error(cal.max(axis=1), cal.argmax(axis=1) == y)
    )
    assert report["methods"]["stacking_uncalibrated"]["ece"] == pytest.approx(c["ece_before"])


def test_uncalibrated_row_has_a_reliability_diagram_and_no_part_in_the_verdict(calibrated) -> None:
    run, _, res = calibrated
    names = {p.name for p in res.figures}
    assert "reliability_stacking_uncalibrated.png" in names and "reliability_stacking.png" in names
    assert (run / "eval" / "reliability_stacking_uncalibrated.png").stat().st_size > 1000
    assert "confusion_stacking_uncalibrated.png" not in names  # same labels as stacking
    assert set(res.tests) == {"stacking_vs_best_member", "stacking_vs_soft_vote"}
    assert all("calibration" not in t.b for t in res.tests.values())
    assert "before calibration" not in res.verdict
    md = res.report_md.read_text()
    assert "## Calibration" in md and "## Operating points" in md
    assert md.index("## Calibration") > md.index("## Significance")
    assert "stacking (before calibration)" in res.table


def test_operating_points_on_test_match_a_hand_count(calibrated) -> None:
    run, meta, res = calibrated
    t = meta["calibration"]["temperature"]
    est, _ = load_meta_estimator(run / "stack")
    data = load_split(run, MEMBERS, "test")
    raw = np.zeros((data.labels.size, len(data.classes)))
    raw[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(data.features)
    cal = _softmax_log(raw, t)
    report = json.loads(res.report_json.read_text())["operating_points"]
    assert set(report) == set(meta["operating_points"]) and report
    for name, op in report.items():
        k = data.classes.index(name)
        thr = meta["operating_points"][name]["threshold"]
        pos, above = data.labels == k, cal[:, k] >= thr
        assert (
            op["threshold"] == thr
            and op["val_sensitivity"] == meta["operating_points"][name]["val_sensitivity"]
        )
        assert (op["tp"], op["fn"]) == (int(np.sum(pos & above)), int(np.sum(pos & ~above)))
        assert (op["tn"], op["fp"]) == (int(np.sum(~pos & ~above)), int(np.sum(~pos & above)))
        assert op["sensitivity"] == pytest.approx(op["tp"] / 10)  # 10 test images per class
        lo, hi = op["sensitivity_ci"]
        assert lo <= op["sensitivity"] <= hi


def _constructed() -> tuple[np.ndarray, np.ndarray]:
    """30 images, classes a/b/c; c has no positives. Answers worked out by hand in the test below."""
    p = np.array(
        [[0.9, 0.05, 0.05]] * 8  # y = a, above a's 0.5
        + [[0.5, 0.3, 0.2]]  # y = a, exactly at a's threshold: above; b's 0.3 too: a false positive of b
        + [[0.49, 0.5, 0.01]]  # y = a, just below a's threshold: a false negative; a false positive of b
        + [[0.1, 0.8, 0.1]] * 18  # y = b
        + [[0.6, 0.3, 0.1]] * 2  # y = b, above a's 0.5: false positives of a; at b's 0.3: true positives
    )
    y = np.array([0] * 10 + [1] * 20)
    return y, p


def test_operating_point_counts_and_wilson_intervals_by_hand() -> None:
    y, p = _constructed()
    a = operating_point("a", {"threshold": 0.5, "target_sensitivity": 0.95}, 0, "test", y, p, 0.95)
    assert (a.tp, a.fn, a.tn, a.fp) == (9, 1, 18, 2)
    assert a.sensitivity == pytest.approx(0.9) and a.specificity == pytest.approx(0.9)
    assert a.sensitivity_ci.low == pytest.approx(0.5958, abs=1e-4)  # Wilson 95% of 9/10
    assert a.sensitivity_ci.high == pytest.approx(0.9821, abs=1e-4)
    lo, hi = a.specificity_ci.low, a.specificity_ci.high
    assert (
        lo is not None and hi is not None and lo < 0.9 < hi and lo > a.sensitivity_ci.low
    )  # 18/20: narrower
    b = operating_point("b", {"threshold": 0.3}, 1, "test", y, p, 0.95)
    assert (b.tp, b.fn, b.tn, b.fp) == (20, 0, 8, 2)
    assert b.sensitivity == 1.0 and b.specificity == pytest.approx(0.8)
    assert b.sensitivity_ci.low == pytest.approx(
        20 / (20 + Z95**2)
    ) and b.sensitivity_ci.high == pytest.approx(1.0)
    c = operating_point("c", {"threshold": 0.5}, 2, "test", y, p, 0.95)
    assert c.skipped and c.sensitivity is None and c.sensitivity_ci.low is None
    assert c.to_dict()["n_positive"] == 0 and c.to_dict()["skipped"] == "no test images of c"


def test_operating_points_from_metadata_skip_and_say_so() -> None:
    y, p = _constructed()
    info = {"operating_points": {"a": {"threshold": 0.5}, "c": {"threshold": 0.2}, "zzz": {"threshold": 0.1}}}
    points, notes = operating_points(info, ("a", "b", "c"), "test", y, p)
    assert points is not None and [op.name for op in points] == ["a", "c"]
    assert points[1].skipped and any("c not measured: no test images of c" in n for n in notes)
    assert any("'zzz' left out" in n for n in notes)
    assert operating_points({}, ("a", "b", "c"), "test", y, p) == (None, [])


def test_wilson_without_scipy_gives_the_same_known_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails: the closed form
    ci = wilson_interval(9, 10)
    assert ci.low == pytest.approx(0.5958, abs=1e-4) and ci.high == pytest.approx(0.9821, abs=1e-4)
    assert wilson_interval(0, 0).low is None


def test_a_bad_temperature_is_refused() -> None:
    assert temperature_of({}) is None
    assert temperature_of({"calibration": {"method": "none", "temperature": 1.0}}) == 1.0
    with pytest.raises(ModelError, match="temperature"):
        temperature_of({"calibration": {"temperature": -2}})


@pytest.fixture(scope="module")
def uncalibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_synthetic_run(SyntheticRun(tmp_path_factory.mktemp("nocal") / "run"))
    fit_meta(MetaConfig(run, cv_folds=3, grid={"C": (10.0,)}, calibrate=False))
    return run


def test_no_temperature_reports_calibration_without_a_before_row(
    uncalibrated_run: Path, tmp_path: Path
) -> None:
    res = evaluate(EvalConfig(uncalibrated_run, out_dir=tmp_path, n_bootstrap=0, plots=False))
    assert "stacking_uncalibrated" not in [m.key for m in res.methods]
    c = json.loads(res.report_json.read_text())["calibration"]
    assert c["method"] == "none" and c["temperature"] == 1.0
    assert c["ece_before"] == c["ece_after"] == res.method("stacking").metrics.ece
    assert "No temperature is applied" in res.report_md.read_text()


def test_an_older_meta_onnx_without_the_records_evaluates_as_before(
    uncalibrated_run: Path, tmp_path: Path
) -> None:
    import onnx

    stack = tmp_path / "stack"
    shutil.copytree(uncalibrated_run / "stack", stack)
    model = onnx.load(str(stack / "meta.onnx"))
    for prop in model.metadata_props:
        if prop.key == META_STACK:
            info = json.loads(prop.value)
            del info["calibration"], info["operating_points"]
            prop.value = json.dumps(info)
    onnx.save(model, str(stack / "meta.onnx"))
    meta = json.loads((stack / "meta.json").read_text())
    del meta["calibration"], meta["operating_points"]
    (stack / "meta.json").write_text(json.dumps(meta))
    res = evaluate(EvalConfig(uncalibrated_run, out_dir=tmp_path / "ev", stack_dir=stack, n_bootstrap=0))
    assert res.calibration is None and res.operating_points is None
    assert [m.key for m in res.methods][-1] == "stacking"
    report = json.loads(res.report_json.read_text())
    assert "calibration" not in report and "operating_points" not in report
    md = res.report_md.read_text()
    assert "## Calibration" not in md and "## Operating points" not in md and "## Comparison" in md
    assert "reliability_stacking.png" in {p.name for p in res.figures}
