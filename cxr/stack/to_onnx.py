"""Convert the fitted meta-learner to a portable ONNX graph and prove it right against two references.

Takes: a fitted estimator from ``cxr.stack.estimators`` (labels are class indices), the member count
and the class list. Makes: ``meta.onnx`` with input ``features`` float64 [N, M*K] and outputs ``label``
int64 [N] and ``probabilities`` float64 [N, K], written by ``cxr.stack.portable_meta`` in default-domain
ONNX operators only (no ``ai.onnx.ml``: OpenVINO and TensorRT's parser refuse that domain), at the opset
asked for. It computes in float64 like scikit-learn; the fused graph casts its float32 features up and the
probabilities back down. A class the estimator never saw gets a column of exact zeros, so K is always the
full class list. The meta-learner's description is stored as JSON in the ``cxr.meta`` metadata property.

Verified on the check features against ``predict_proba`` and against skl2onnx's own conversion (the
training-side reference, ``ai.onnx.ml``, ``zipmap=False``): max abs diff <= ``tolerance`` (default 1e-6)
to both, labels identical to ``predict`` and to skl2onnx's; a failure raises ``VerificationError``. With a
calibration temperature (``cxr.stack.calibrate``) the graph divides its logits by T, and both references
are calibrated with the same formula in numpy before the comparison.
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
from onnx import helper, numpy_helper

from cxr.calibration import apply_temperature
from cxr.errors import ModelError, VerificationError
from cxr.labels import NOTICE
from cxr.session import cpu_session
from cxr.spec import INPUT_FEATURES, META_STACK, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from cxr.stack.portable_meta import class_indices, portable_meta

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
    embed = np.zeros((seen.size, k), dtype=np.float64)
    embed[np.arange(seen.size), seen] = 1.0
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


def to_onnx(est: Any, n_features: int, k: int, opset: int, temperature: float = 1.0) -> onnx.ModelProto:
    """The portable (default-domain) graph of ``est``, unverified and without metadata."""
    return portable_meta(est, n_features, k, opset, temperature)


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
            "(cxr.stack.portable_meta) with stack/meta.npz",
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
    tolerance: float = 1e-6,
    rng: np.random.Generator | None = None,
    temperature: float = 1.0,
) -> MetaOnnxResult:
    """Convert, verify and save ``est`` (see the module docstring)."""
    k = len(classes)
    n_features = n_members * k
    model = to_onnx(est, n_features, k, opset, temperature)
    reference = skl2onnx_reference(est, n_features, k, opset)
    meta = {"classes": list(classes), "n_members": n_members, "notice": NOTICE, **dict(info or {})}
    helper.set_model_props(model, {META_STACK: json.dumps(meta, sort_keys=True, default=str)})
    onnx.checker.check_model(model, full_check=True)
    if check_features is None:
        gen = rng if rng is not None else np.random.default_rng(0)
        check_features = gen.dirichlet(np.ones(k), size=(64, n_members)).reshape(64, n_features)
    x = np.asarray(check_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ModelError(f"check features have shape {x.shape}, expected [N, {n_features}]")
    check = verify_meta(model, reference, est, x, k, tolerance, temperature)
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
