"""The meta-learner: feature order, cross-validated regularisation, pickle-free storage, ONNX parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("skl2onnx")

from cxr.errors import ConfigError, ModelError  # noqa: E402
from cxr.labels import CLASSES  # noqa: E402
from cxr.stack.estimators import (
    ESTIMATORS,  # noqa: E402
    estimator_state,  # noqa: E402
)
from cxr.stack.features import load_split  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta, full_proba, load_meta_estimator  # noqa: E402
from cxr.stack.to_onnx import convert_meta, meta_info  # noqa: E402
from tests.run_factory import SyntheticRun, write_synthetic_run  # noqa: E402

K = len(CLASSES)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 25 validation images per class: 100 predictions, the minimum a temperature is fitted on
    per_class = {c: (12, 25, 10) for c in CLASSES}
    return write_synthetic_run(SyntheticRun(tmp_path_factory.mktemp("meta") / "run", per_class=per_class))


@pytest.fixture(scope="module")
def fitted(run: Path):
    return fit_meta(MetaConfig(run))


def test_features_are_member_major_in_a_fixed_order(run: Path) -> None:
    data = load_split(run, ("beta", "alpha"), "val")
    x = data.features
    assert x.shape == (100, 2 * K)
    np.testing.assert_array_equal(x[:, :K], data.member_probs[:, 0])
    np.testing.assert_array_equal(x[:, K:], data.member_probs[:, 1])
    assert data.members == ("beta", "alpha")


def test_default_member_order_is_sorted_and_recorded(fitted, run: Path) -> None:
    assert fitted.members == ("alpha", "beta", "delta", "epsilon", "gamma")
    meta = json.loads(fitted.meta_json.read_text())
    assert meta["member_order"] == list(fitted.members)
    assert meta["classes"] == list(CLASSES)
    assert meta["feature_layout"].startswith("member-major")
    assert meta_info(onnx.load(str(fitted.onnx_path)))["member_order"] == list(fitted.members)


def test_regularisation_is_chosen_by_cross_validation(fitted) -> None:
    meta = json.loads(fitted.meta_json.read_text())
    scores = meta["cv"]["scores"]
    assert [s["params"]["C"] for s in scores] == list(ESTIMATORS["logistic_regression"].grid["C"])
    best = min(scores, key=lambda s: s["log_loss"])
    assert fitted.params["C"] == best["params"]["C"]
    assert fitted.cv_score == pytest.approx(best["log_loss"])
    assert 0 < fitted.cv_metrics["accuracy"] <= 1
    assert meta["val_metrics"] == fitted.cv_metrics


def test_estimator_follows_scikit_learn_conventions_and_reloads_without_pickle(fitted, run: Path) -> None:
    est, meta = load_meta_estimator(fitted.stack_dir)
    assert type(est).__name__ == "LogisticRegression"
    np.testing.assert_array_equal(est.classes_, np.arange(K))  # class-list order
    assert est.C == fitted.params["C"]
    with np.load(fitted.estimator_path, allow_pickle=False) as arrays:  # plain arrays only
        assert {"coef_", "intercept_", "classes_"} <= set(arrays.files)
    x = load_split(run, fitted.members, "val").features
    probs = est.predict_proba(x)
    assert probs.shape == (100, K)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_tampered_estimator_kind_is_refused(fitted, tmp_path: Path) -> None:
    from cxr.stack.estimators import load_estimator

    desc = json.loads(fitted.meta_json.read_text())["estimator"]
    with pytest.raises(ModelError, match="is not one cxr knows"):
        load_estimator({**desc, "kind": "os.system"}, fitted.estimator_path)


def test_onnx_conversion_matches_predict_proba(fitted, run: Path) -> None:
    from scipy.special import softmax

    est, meta = load_meta_estimator(fitted.stack_dir)
    t = meta["calibration"]["temperature"]
    assert (
        meta["calibration"]["method"] == "temperature" and t != 1.0
    )  # the fixture's members are over-confident
    x = load_split(run, fitted.members, "test").features
    sess = ort.InferenceSession(str(fitted.onnx_path), providers=["CPUExecutionProvider"])
    label, probs = sess.run(["label", "probabilities"], {"features": x})
    assert probs.dtype == np.float64 and probs.shape == (x.shape[0], K)  # a tensor, not ZipMap dicts
    assert label.dtype == np.int64
    # the graph is predict_proba with the logits divided by the recorded temperature
    assert np.max(np.abs(probs - softmax(est.decision_function(x) / t, axis=1))) <= 1e-6
    assert np.max(np.abs(probs - est.predict_proba(x))) > 1e-3  # and the temperature really is in it
    np.testing.assert_array_equal(label, est.predict(x))
    model = onnx.load(str(fitted.onnx_path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert [n.op_type for n in model.graph.node if n.op_type == "ZipMap"] == []


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_every_table_estimator_fits_stores_and_converts(tmp_path: Path, kind: str) -> None:
    run = write_synthetic_run(SyntheticRun(tmp_path / "run", seed=3))
    grid = {"C": (0.1, 1.0)} if kind == "logistic_regression" else None  # the full C grid is tested above
    res = fit_meta(MetaConfig(run, estimator=kind, cv_folds=3, grid=grid))
    assert res.onnx_max_abs_diff <= 1e-6
    est, _ = load_meta_estimator(res.stack_dir)
    assert res.estimator == kind and type(est) is ESTIMATORS[kind].cls


@pytest.mark.parametrize("calibrate", [False, True])
def test_class_missing_from_meta_training_gets_zero_probability(tmp_path: Path, calibrate: bool) -> None:
    per_class = {
        "COVID": (5, 10, 5),
        "Lung_Opacity": (5, 0, 5),
        "Normal": (5, 10, 5),
        "Viral Pneumonia": (5, 10, 5),
    }
    run = write_synthetic_run(SyntheticRun(tmp_path / "run", per_class=per_class))
    res = fit_meta(MetaConfig(run, cv_folds=3, calibrate=calibrate))
    assert res.classes_seen == ("COVID", "Normal", "Viral Pneumonia")
    assert any("Lung_Opacity" in w for w in res.warnings)
    est, _ = load_meta_estimator(res.stack_dir)
    x = load_split(run, res.members, "test").features
    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    label, probs = sess.run(None, {"features": x})
    assert probs.shape == (x.shape[0], K)
    assert np.all(probs[:, 1] == 0) and not np.any(label == 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    if not calibrate:
        np.testing.assert_allclose(probs, full_proba(est, x, K), atol=1e-6)
    else:  # calibrated: same ranking per row, other values
        np.testing.assert_array_equal(probs.argmax(axis=1), full_proba(est, x, K).argmax(axis=1))


def test_unknown_estimator_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean logistic_regression"):
        MetaConfig(Path("."), estimator="logistic_regresion")


def test_conversion_refuses_string_labels(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    est = LogisticRegression().fit(rng.random((20, 8)), np.array(["x", "y"] * 10))
    with pytest.raises(ModelError, match="not class indices"):
        convert_meta(est, n_members=2, classes=("x", "y", "z", "w"), out=tmp_path / "m.onnx")


def test_state_with_objects_cannot_be_stored() -> None:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression().fit(np.random.default_rng(0).random((10, 3)), [0, 1] * 5)
    est.some_object_ = object()
    with pytest.raises(ModelError, match="cannot be stored without pickle"):
        estimator_state(est)
