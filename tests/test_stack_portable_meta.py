"""The portable meta-learner graph: default ONNX domain only, equal to scikit-learn and skl2onnx, or refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("skl2onnx")

from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402
from sklearn.linear_model import LogisticRegression, RidgeClassifier  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402

from cxr.errors import ModelError, VerificationError  # noqa: E402
from cxr.stack.to_onnx import OPS, convert_meta, meta_info, portable_meta, skl2onnx_reference, verify_meta  # noqa: E402

M = 3  # members
ESTIMATORS: dict[str, Callable[[], Any]] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=2000),
    "lda": lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.3),
    "gaussian_nb": GaussianNB,
}
CASES = {  # (K, classes present in the meta-training labels)
    "all_seen": (4, (0, 1, 2, 3)),
    "one_unseen": (4, (0, 2, 3)),
    "binary": (2, (0, 1)),
}


def features(k: int, seen: tuple[int, ...], n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Member-major Dirichlet probabilities, nudged towards each row's label so the fit is not trivial."""
    rng = np.random.default_rng(seed)
    y = np.asarray(seen)[np.arange(n) % len(seen)]
    f = rng.dirichlet(np.ones(k), size=(n, M)) + 0.8 * np.eye(k)[y][:, None, :]
    return (f / f.sum(-1, keepdims=True)).reshape(n, M * k), y


def check_set(k: int, x: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([x, rng.dirichlet(np.ones(k), size=(40, M)).reshape(40, M * k)])


def run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probs = sess.run(["label", "probabilities"], {"features": x})
    return label, probs


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_portable_graph_equals_scikit_learn_in_the_default_domain(
    tmp_path: Path, kind: str, case: str
) -> None:
    k, seen = CASES[case]
    x, y = features(k, seen)
    est = ESTIMATORS[kind]().fit(x, y)
    xc = check_set(k, x)
    classes = [f"c{i}" for i in range(k)]
    if kind == "lda" and case == "binary":  # skl2onnx's binary LDA is wrong, so the reference refuses it
        with pytest.raises(VerificationError, match=r"p_skl2onnx\| = 0\.\d+"):
            convert_meta(est, n_members=M, classes=classes, out=tmp_path / "m.onnx", check_features=xc)
        return
    res = convert_meta(
        est, n_members=M, classes=classes, out=tmp_path / "m.onnx", check_features=xc, info={"kind": kind}
    )
    model = onnx.load(str(res.path))
    assert {n.domain for n in model.graph.node} == {""}
    assert {n.op_type for n in model.graph.node} <= set(OPS)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert meta_info(model)["kind"] == kind and meta_info(model)["classes"] == classes
    label, probs = run_onnx(res.path, xc)
    assert probs.dtype == np.float64 and probs.shape == (xc.shape[0], k) and label.dtype == np.int64
    expected = np.zeros_like(probs)
    expected[:, list(seen)] = est.predict_proba(xc)
    assert np.max(np.abs(probs - expected)) <= 1e-6
    np.testing.assert_array_equal(label, est.predict(xc))
    for unseen in sorted(set(range(k)) - set(seen)):
        assert np.all(probs[:, unseen] == 0.0) and not np.any(label == unseen)
    assert res.max_abs_diff <= 1e-6 and res.max_abs_diff_skl2onnx <= 1e-6 and res.labels_equal


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_graph_is_written_at_the_opset_asked_for(tmp_path: Path, opset: int) -> None:
    x, y = features(4, (0, 2, 3))
    est = GaussianNB().fit(x, y)
    res = convert_meta(est, n_members=M, classes=list("abcd"), out=tmp_path / "m.onnx", opset=opset)
    model = onnx.load(str(res.path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)] and res.opset == opset
    onnx.checker.check_model(model, full_check=True)
    label, _ = run_onnx(res.path, x)
    np.testing.assert_array_equal(label, est.predict(x))


def test_gaussian_nb_with_a_saturated_member_stays_exact() -> None:
    """A member stuck at 1.0 for one class leaves var ~ 1e-10; expanding (x - theta)^2 drifts ~6e-7 there."""
    x, y = features(4, (0, 1, 2, 3))
    x[y == 0, 0] = 1.0
    est = GaussianNB().fit(x, y)
    assert est.var_.min() < 1e-9
    near = np.repeat(x[:20], 30, axis=0)
    near[:, 0] = 1.0 - np.tile(np.logspace(-8, -3, 30), 20)  # where class 0 competes with the others
    sess = ort.InferenceSession(
        portable_meta(est, M * 4, 4, 17).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    _, probs = sess.run(None, {"features": near})
    assert np.max(np.abs(probs - est.predict_proba(near))) <= 1e-10


def _perturb_weights(model: onnx.ModelProto) -> None:
    for t in model.graph.initializer:
        if t.name in ("meta_W", "meta_theta"):
            w = onnx.numpy_helper.to_array(t)
            t.CopyFrom(onnx.numpy_helper.from_array(w * (1 + 1e-3) + 1e-3, t.name))


def _argmin_labels(model: onnx.ModelProto) -> None:
    for n in model.graph.node:
        if n.op_type == "ArgMax":
            n.op_type = "ArgMin"


@pytest.mark.parametrize("corrupt", [_perturb_weights, _argmin_labels], ids=["weights", "labels"])
@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_corrupted_graph_is_refused(kind: str, corrupt: Callable[[onnx.ModelProto], None]) -> None:
    x, y = features(4, (0, 2, 3))
    est = ESTIMATORS[kind]().fit(x, y)
    xc = check_set(4, x)  # not only the (confidently classified) training rows
    good = portable_meta(est, M * 4, 4, 17)
    reference = skl2onnx_reference(est, M * 4, 4, 17)
    assert verify_meta(good, reference, est, xc, 4).max_abs_diff <= 1e-6
    corrupt(good)
    with pytest.raises(VerificationError, match=r"predict_proba\| = .*p_skl2onnx\| = .*labels identical"):
        verify_meta(good, reference, est, xc, 4)


@pytest.mark.parametrize(
    ("est", "k", "words"),
    [
        (RidgeClassifier(), 4, "cannot write a RidgeClassifier"),
        (GaussianNB(), 5, "fitted on 12 features, expected 15"),
    ],
)
def test_unsupported_or_mismatched_estimator_is_refused(est: Any, k: int, words: str) -> None:
    x, y = features(4, (0, 1, 2, 3))
    est.fit(x, y)
    with pytest.raises(ModelError, match=words):
        portable_meta(est, M * k, k, 17)
