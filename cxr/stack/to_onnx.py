"""Convert the fitted meta-learner to ONNX with skl2onnx and prove the conversion right.

Takes: a fitted estimator from ``cxr.stack.estimators`` (labels are class indices), the member count
and the class list. Makes: ``meta.onnx`` with input ``features`` float64 [N, M*K] and outputs ``label``
int64 [N] and ``probabilities`` float64 [N, K] (a tensor: explicit target opset, ``zipmap=False``). It
computes in float64 like scikit-learn (in float32 skl2onnx's LinearClassifier drifts by up to 2e-5 for
LDA); the fused graph casts its float32 features up and the probabilities back down. A class the estimator
never saw is added back as a column of zeros (a MatMul), so K is always the full class list. The
meta-learner's description is stored as JSON in the ``cxr.meta`` metadata property. Verified against
``predict_proba`` (max abs diff <= ``tolerance``, default 1e-6) and ``predict`` (labels identical); a
failure raises ``VerificationError``.
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

from cxr.errors import ModelError, VerificationError
from cxr.labels import NOTICE
from cxr.session import cpu_session
from cxr.stack.features import META_PROP

FEATURES = "features"
LABEL = "label"
PROBABILITIES = "probabilities"
ML_OPSET = 3


@dataclass(frozen=True)
class MetaOnnxResult:
    path: Path
    max_abs_diff: float
    labels_equal: bool
    opset: int
    ir_version: int
    sha256: str


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
            if name == PROBABILITIES:
                node.output[i] = narrow
    embed = np.zeros((seen.size, k), dtype=np.float64)
    embed[np.arange(seen.size), seen] = 1.0
    g.initializer.append(numpy_helper.from_array(embed, "probabilities_embed"))
    g.node.append(
        helper.make_node("MatMul", [narrow, "probabilities_embed"], [PROBABILITIES], name="widen_classes")
    )
    for out in g.output:
        if out.name == PROBABILITIES:
            out.type.tensor_type.shape.dim[1].dim_value = k


def meta_info(model: onnx.ModelProto, source: str = "meta.onnx") -> dict[str, Any]:
    """The ``cxr.meta`` description stored in a converted meta-learner."""
    props = {p.key: p.value for p in model.metadata_props}
    if META_PROP not in props:
        raise ModelError(
            f"{source} has no cxr meta-learner description ({META_PROP})",
            hint="convert it with cxr (`cxr stack RUN_DIR` writes stack/meta.onnx)",
            path=source,
        )
    return dict(json.loads(props[META_PROP]))


def to_onnx(est: Any, n_features: int, k: int, opset: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType

    classes_ = np.asarray(est.classes_)
    if classes_.dtype.kind not in "iu" or classes_.min() < 0 or classes_.max() >= k:
        raise ModelError(
            f"the meta-learner's classes_ {classes_.tolist()} are not class indices 0..{k - 1}",
            hint="fit it with cxr.stack.stack.fit_meta, which uses class indices as labels",
        )
    try:
        model = convert_sklearn(
            est,
            initial_types=[(FEATURES, DoubleTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            options={id(est): {"zipmap": False}},
        )
    except Exception as e:  # skl2onnx raises many kinds for unsupported estimators or options
        raise ModelError(
            f"skl2onnx cannot convert {type(est).__name__}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
            hint="choose a meta-learner from cxr.stack.estimators.ESTIMATORS",
        ) from e
    dedupe_opsets(model)
    declared = {o.domain: o.version for o in model.opset_import}.get("", opset)
    if declared != opset:  # skl2onnx declares the lowest opset its nodes need: lift it to the one asked for
        model = onnx.version_converter.convert_version(model, opset)
        dedupe_opsets(model)
    outs = [o.name for o in model.graph.output]
    if outs != [LABEL, PROBABILITIES]:
        raise ModelError(f"unexpected skl2onnx outputs {outs}", hint="use skl2onnx >= 1.17")
    seen = classes_.astype(np.int64)
    if seen.size != k or not np.array_equal(seen, np.arange(k)):
        _widen(model, seen, k)
    model.graph.name = "cxr_meta"
    return model


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
) -> MetaOnnxResult:
    """Convert, verify and save ``est`` (see the module docstring)."""
    k = len(classes)
    n_features = n_members * k
    model = to_onnx(est, n_features, k, opset)
    meta = {"classes": list(classes), "n_members": n_members, "notice": NOTICE, **dict(info or {})}
    helper.set_model_props(model, {META_PROP: json.dumps(meta, sort_keys=True, default=str)})
    onnx.checker.check_model(model, full_check=True)
    if check_features is None:
        gen = rng if rng is not None else np.random.default_rng(0)
        check_features = gen.dirichlet(np.ones(k), size=(64, n_members)).reshape(64, n_features)
    x = np.asarray(check_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ModelError(f"check features have shape {x.shape}, expected [N, {n_features}]")
    sess = cpu_session(model.SerializeToString())
    label, probs = sess.run([LABEL, PROBABILITIES], {FEATURES: x})
    ref = np.zeros((x.shape[0], k), dtype=np.float64)
    ref[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(x)
    diff = float(np.max(np.abs(probs.astype(np.float64) - ref))) if x.shape[0] else 0.0
    labels_equal = bool(np.array_equal(label, est.predict(x)))
    if diff > tolerance or not labels_equal or probs.shape != (x.shape[0], k):
        raise VerificationError(
            f"the ONNX meta-learner differs from scikit-learn: max |p_onnx - predict_proba| = {diff:.3g} "
            f"(tolerance {tolerance:g}), labels identical: {labels_equal}, output shape {probs.shape}",
            hint="choose another meta-learner (`--estimator logistic_regression`) or report the skl2onnx bug",
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    out.write_bytes(data)
    return MetaOnnxResult(
        path=out,
        max_abs_diff=diff,
        labels_equal=labels_equal,
        opset=opset,
        ir_version=int(model.ir_version),
        sha256=hashlib.sha256(data).hexdigest(),
    )
