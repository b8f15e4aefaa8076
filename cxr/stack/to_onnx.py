"""The meta-learner as portable ONNX, verified against ``predict_proba`` and skl2onnx.

Takes: a fitted estimator of ``cxr.stack.estimators`` (labels are class indices), the member count and the
class list. Makes: ``meta.onnx``: input ``features`` float64 [N, M*K], outputs ``label`` int64 [N] and
``probabilities`` float64 [N, K], in default-domain operators only (``OPS``; OpenVINO and TensorRT refuse
``ai.onnx.ml``), with its description as JSON in the ``cxr.meta`` metadata property.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.calibration import apply_temperature
from cxr.errors import ModelError, VerificationError
from cxr.labels import NOTICE
from cxr.session import cpu_session
from cxr.spec import INPUT_FEATURES, META_STACK, OUTPUT_LABEL, OUTPUT_PROBABILITIES

BATCH = "N"
OPS = ("MatMul", "Add", "Sub", "Mul", "Div", "Softmax", "ArgMax", "Gather")


@dataclass
class _Graph:
    """Nodes and initializers being assembled (float64 constants unless the array says otherwise)."""

    nodes: list[onnx.NodeProto]
    inits: list[TensorProto]

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def class_indices(est: Any, k: int) -> np.ndarray:
    """``est.classes_`` as int64 class indices into the K-class list, or a ModelError."""
    classes_ = np.asarray(getattr(est, "classes_", np.array([], dtype=object)))
    if classes_.size == 0 or classes_.dtype.kind not in "iu" or classes_.min() < 0 or classes_.max() >= k:
        raise ModelError(
            f"the meta-learner's classes_ {classes_.tolist()} are not class indices 0..{k - 1}",
            hint="fit it with cxr.stack.stack.fit_meta, which uses class indices as labels",
        )
    return classes_.astype(np.int64)


def _linear_logits(g: _Graph, est: Any, n_features: int) -> str:
    """``x @ W + b`` with W = coef_.T, b = intercept_; binary: a zero column first (softmax([0, s]))."""
    w = np.asarray(est.coef_, dtype=np.float64).T
    b = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if w.shape[1] == 1:
        w = np.concatenate([np.zeros_like(w), w], axis=1)
        b = np.concatenate([np.zeros(1), b])
    _check_shape(est, w.shape[0], n_features)
    xw = g.op("MatMul", [INPUT_FEATURES, g.const("meta_W", w)], "meta_xW")
    return g.op("Add", [xw, g.const("meta_b", b)], "meta_logits")


def _gaussian_nb_logits(g: _Graph, est: Any, n_features: int) -> str:
    """GaussianNB's joint log likelihood per class, term by term as scikit-learn computes it."""
    theta = np.asarray(est.theta_, dtype=np.float64)
    var = np.asarray(est.var_, dtype=np.float64)
    c, f = theta.shape
    _check_shape(est, f, n_features)
    const = np.log(np.asarray(est.class_prior_, dtype=np.float64)) - 0.5 * np.sum(
        np.log(2.0 * np.pi * var), axis=1
    )
    replicate = np.tile(np.eye(f), (1, c))  # [F, C*F]: x copied once per class, exactly
    block_sum = np.kron(np.eye(c), np.full((f, 1), -0.5))  # [C*F, C]: -0.5 * the sum within each class
    rep = g.op("MatMul", [INPUT_FEATURES, g.const("meta_replicate", replicate)], "meta_x_per_class")
    diff = g.op("Sub", [rep, g.const("meta_theta", theta.reshape(-1))], "meta_diff")
    sq = g.op("Mul", [diff, diff], "meta_diff_sq")
    scaled = g.op("Div", [sq, g.const("meta_var", var.reshape(-1))], "meta_scaled")
    quad = g.op("MatMul", [scaled, g.const("meta_block_sum", block_sum)], "meta_quadratic")
    return g.op("Add", [quad, g.const("meta_log_norm", const)], "meta_logits")


def _check_shape(est: Any, got: int, n_features: int) -> None:
    if got != n_features:
        raise ModelError(
            f"the {type(est).__name__} meta-learner was fitted on {got} features, expected {n_features} "
            "(members x classes)",
            hint="refit it with `cxr stack RUN_DIR` on this run's members",
        )


def _logits(g: _Graph, est: Any, n_features: int) -> str:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    if type(est) in (LogisticRegression, LinearDiscriminantAnalysis):
        return _linear_logits(g, est, n_features)
    if type(est) is GaussianNB:
        return _gaussian_nb_logits(g, est, n_features)
    raise ModelError(
        f"cxr cannot write a {type(est).__name__} meta-learner as portable ONNX",
        hint="choose a meta-learner from cxr.stack.estimators.ESTIMATORS",
    )


def portable_meta(est: Any, n_features: int, k: int, opset: int, temperature: float = 1.0) -> onnx.ModelProto:
    """The default-domain graph of ``est``, unverified and without metadata.

    The formulas are scikit-learn's over the C classes it saw (logits s); probabilities softmax(s / T)
    (binary linear models: softmax([0, s])), label argmax(s) (not divided by T, so ``predict`` either way),
    placed into K columns by a 0/1 MatMul so an unseen class gets exactly 0.
    """
    seen = class_indices(est, k)
    g = _Graph([], [])
    raw = _logits(g, est, n_features)
    logits = raw
    if temperature != 1.0:
        logits = g.op(
            "Div", [raw, g.const("meta_temperature", np.array(float(temperature)))], "meta_logits_t"
        )
    widen = seen.size != k or not np.array_equal(seen, np.arange(k))  # a class absent from fitting
    probs_seen = g.op(
        "Softmax", [logits], "meta_probabilities_seen" if widen else OUTPUT_PROBABILITIES, axis=1
    )
    if widen:
        embed = np.eye(k, dtype=np.float64)[seen]  # [k_seen, K]: each seen class's column at its index
        g.op("MatMul", [probs_seen, g.const("meta_embed", embed)], OUTPUT_PROBABILITIES)
    index = g.op("ArgMax", [raw], "meta_index" if widen else OUTPUT_LABEL, axis=1, keepdims=0)
    if widen:
        g.op("Gather", [g.const("meta_classes", seen), index], OUTPUT_LABEL, axis=0)
    graph = helper.make_graph(
        g.nodes,
        "cxr_meta",
        [helper.make_tensor_value_info(INPUT_FEATURES, TensorProto.DOUBLE, [BATCH, n_features])],
        [
            helper.make_tensor_value_info(OUTPUT_LABEL, TensorProto.INT64, [BATCH]),
            helper.make_tensor_value_info(OUTPUT_PROBABILITIES, TensorProto.DOUBLE, [BATCH, k]),
        ],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="cxr",
        ir_version=helper.find_min_ir_version_for(opsets),
    )


ML_OPSET = 3  # the ai.onnx.ml opset of the skl2onnx reference only; meta.onnx does not import that domain


@dataclass(frozen=True)
class MetaOnnxResult:
    path: Path
    max_abs_diff: float  # vs predict_proba
    labels_equal: bool  # vs predict and vs skl2onnx's labels
    opset: int
    ir_version: int
    sha256: str
    max_abs_diff_skl2onnx: float = 0.0  # vs skl2onnx's conversion


@dataclass(frozen=True)
class MetaCheck:
    max_abs_diff: float
    max_abs_diff_skl2onnx: float
    labels_equal: bool


def dedupe_opsets(model: onnx.ModelProto) -> None:
    """skl2onnx may import the same domain twice: keep one entry per domain (the highest version)."""
    best: dict[str, int] = {}
    for o in model.opset_import:
        best[o.domain] = max(best.get(o.domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(best.items()))


def _widen(model: onnx.ModelProto, seen: np.ndarray, k: int) -> None:
    """Rename the k_seen-wide probability output and add a MatMul that places it into K columns."""
    g = model.graph
    narrow = "probabilities_seen"
    for node in g.node:
        for i, name in enumerate(node.output):
            if name == OUTPUT_PROBABILITIES:
                node.output[i] = narrow
    embed = np.eye(k, dtype=np.float64)[seen]
    g.initializer.append(numpy_helper.from_array(embed, "probabilities_embed"))
    g.node.append(
        helper.make_node(
            "MatMul", [narrow, "probabilities_embed"], [OUTPUT_PROBABILITIES], name="widen_classes"
        )
    )
    for out in g.output:
        if out.name == OUTPUT_PROBABILITIES:
            out.type.tensor_type.shape.dim[1].dim_value = k


def meta_info(model: onnx.ModelProto, source: str = "meta.onnx") -> dict[str, Any]:
    """The ``cxr.meta`` description stored in a converted meta-learner."""
    props = {p.key: p.value for p in model.metadata_props}
    if META_STACK not in props:
        raise ModelError(
            f"{source} has no cxr meta-learner description ({META_STACK})",
            hint="convert it with cxr (`cxr stack RUN_DIR` writes stack/meta.onnx)",
            path=source,
        )
    return dict(json.loads(props[META_STACK]))


def skl2onnx_reference(est: Any, n_features: int, k: int, opset: int) -> onnx.ModelProto:
    """skl2onnx's conversion of ``est`` (``ai.onnx.ml`` operators), widened to K: the reference only."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType

    seen = class_indices(est, k)
    try:
        model = convert_sklearn(
            est,
            initial_types=[(INPUT_FEATURES, DoubleTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            options={id(est): {"zipmap": False}},
        )
    except Exception as e:  # skl2onnx raises many kinds for unsupported estimators or options
        raise ModelError(
            f"skl2onnx cannot convert {type(est).__name__}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
            hint="choose a meta-learner from cxr.stack.estimators.ESTIMATORS",
        ) from e
    dedupe_opsets(model)
    outs = [o.name for o in model.graph.output]
    if outs != [OUTPUT_LABEL, OUTPUT_PROBABILITIES]:
        raise ModelError(f"unexpected skl2onnx outputs {outs}", hint="use skl2onnx >= 1.17")
    if seen.size != k or not np.array_equal(seen, np.arange(k)):
        _widen(model, seen, k)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, probs = cpu_session(model.SerializeToString()).run(
        [OUTPUT_LABEL, OUTPUT_PROBABILITIES], {INPUT_FEATURES: x}
    )
    return np.asarray(label), np.asarray(probs, dtype=np.float64)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def verify_meta(
    model: onnx.ModelProto,
    reference: onnx.ModelProto,
    est: Any,
    x: np.ndarray,
    k: int,
    tolerance: float = 1e-6,
    temperature: float = 1.0,
) -> MetaCheck:
    """``model`` on ``x`` vs ``predict_proba``/``predict`` and vs the skl2onnx ``reference``, or raise.

    With a temperature, both references are calibrated by ``apply_temperature`` (numpy) before comparing.
    """
    label, probs = _run(model, x)
    ref_label, ref_probs = _run(reference, x)
    expected = np.zeros((x.shape[0], k), dtype=np.float64)
    expected[:, class_indices(est, k)] = est.predict_proba(x)
    if temperature != 1.0:
        expected = apply_temperature(expected, temperature)
        ref_probs = apply_temperature(ref_probs, temperature)
    check = MetaCheck(
        max_abs_diff=_max_abs(probs, expected),
        max_abs_diff_skl2onnx=_max_abs(probs, ref_probs),
        labels_equal=bool(np.array_equal(label, est.predict(x)) and np.array_equal(label, ref_label)),
    )
    if max(check.max_abs_diff, check.max_abs_diff_skl2onnx) > tolerance or not check.labels_equal:
        raise VerificationError(
            f"the ONNX meta-learner differs from its references: max |p_onnx - predict_proba| = "
            f"{check.max_abs_diff:.3g}, max |p_onnx - p_skl2onnx| = {check.max_abs_diff_skl2onnx:.3g} "
            f"(tolerance {tolerance:g}; skl2onnx itself vs predict_proba: {_max_abs(ref_probs, expected):.3g}), "
            f"labels identical to predict and skl2onnx: {check.labels_equal}, output shape {probs.shape} "
            f"(expected {expected.shape})",
            hint="choose another meta-learner (`--estimator logistic_regression`) and report this as a cxr bug "
            "(cxr.stack.to_onnx) with stack/meta.npz",
        )
    return check


def convert_meta(
    est: Any,
    *,
    n_members: int,
    classes: Sequence[str],
    out: Path,
    opset: int = 17,
    check_features: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
) -> MetaOnnxResult:
    """Convert, verify and save ``est`` (see the module docstring)."""
    k = len(classes)
    n_features = n_members * k
    model = portable_meta(est, n_features, k, opset, temperature)
    reference = skl2onnx_reference(est, n_features, k, opset)
    meta = {"classes": list(classes), "n_members": n_members, "notice": NOTICE, **dict(info or {})}
    helper.set_model_props(model, {META_STACK: json.dumps(meta, sort_keys=True, default=str)})
    onnx.checker.check_model(model, full_check=True)
    if check_features is None:
        rng = np.random.default_rng(0)
        check_features = rng.dirichlet(np.ones(k), size=(64, n_members)).reshape(64, n_features)
    x = np.asarray(check_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ModelError(f"check features have shape {x.shape}, expected [N, {n_features}]")
    check = verify_meta(model, reference, est, x, k, temperature=temperature)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    out.write_bytes(data)
    return MetaOnnxResult(
        path=out,
        max_abs_diff=check.max_abs_diff,
        labels_equal=check.labels_equal,
        opset=opset,
        ir_version=int(model.ir_version),
        sha256=hashlib.sha256(data).hexdigest(),
        max_abs_diff_skl2onnx=check.max_abs_diff_skl2onnx,
    )
