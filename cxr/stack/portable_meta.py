"""Write a fitted meta-learner as a default-domain ONNX graph (no ai.onnx.ml), so any ONNX runtime reads it.

Takes: a fitted ``LogisticRegression``, ``LinearDiscriminantAnalysis`` or ``GaussianNB`` whose ``classes_``
are class indices, the feature count F, the class count K and the target opset. Makes: a ``ModelProto``
with input ``features`` float64 [N, F] and outputs ``label`` int64 [N] and ``probabilities`` float64
[N, K], built from MatMul, Add, Sub, Mul, Div, Softmax, ArgMax and Gather only (their semantics are the
same from opset 9 to 21 for these 2-D shapes, so the graph is written directly at the opset asked for).

The formulas are scikit-learn's, over the C classes the estimator saw (s: its decision scores):

- linear models (LogisticRegression, LinearDiscriminantAnalysis, any solver): ``s = x @ coef_.T +
  intercept_``; ``predict_proba = softmax(s)`` for C > 2 and ``[1 - expit(s), expit(s)]`` for C = 2, which
  is ``softmax([0, s])``, so the binary case gets a zero column in W and b. ``predict = argmax(s)``
  (binary: ``s > 0``; ArgMax keeps the first index on a tie, as ``s > 0`` does).
- GaussianNB: ``s_c = log prior_c - 0.5 sum_j log(2 pi var_cj) - 0.5 sum_j (x_j - theta_cj)^2 / var_cj``;
  ``predict_proba = exp(s - logsumexp(s)) = softmax(s)``, ``predict = argmax(s)``. The squared difference is
  not expanded into ``x^2 @ Q + x @ W`` (that cancels catastrophically when var is tiny, e.g. a saturated
  member); x is replicated per class by a 0/1 MatMul (exact) and the differences taken as scikit-learn does.

A calibration temperature T divides s before the softmax (``softmax(s / T)``, Guo et al. 2017).
Label = ``classes_[ArgMax(s)]`` (a Gather, when ``classes_`` is not 0..K-1). A class the estimator never
saw cannot get probability exactly 0 from a logit, so the softmax runs over the C seen classes and a 0/1
MatMul places its columns into K, leaving an unseen class at exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.errors import ModelError
from cxr.spec import INPUT_FEATURES, OUTPUT_LABEL, OUTPUT_PROBABILITIES

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
    """The default-domain graph of ``est`` (see the module docstring); unverified, no metadata.

    ``temperature`` != 1 divides the logits before the softmax (``cxr.stack.calibrate``); ArgMax reads the
    undivided logits, so the label is the estimator's ``predict`` either way.
    """
    seen = class_indices(est, k)
    g = _Graph([], [])
    raw = _logits(g, est, n_features)
    logits = raw
    if temperature != 1.0:
        logits = g.op(
            "Div", [raw, g.const("meta_temperature", np.array(float(temperature)))], "meta_logits_t"
        )
    widen = seen.size != k or not np.array_equal(seen, np.arange(k))
    probs_seen = g.op(
        "Softmax", [logits], "meta_probabilities_seen" if widen else OUTPUT_PROBABILITIES, axis=1
    )
    if widen:
        embed = np.zeros((seen.size, k), dtype=np.float64)
        embed[np.arange(seen.size), seen] = 1.0
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
