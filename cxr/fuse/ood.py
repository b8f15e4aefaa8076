"""A learned out-of-distribution score from the members' pooled features, fitted at fuse time, and its graph.

Takes: the checked members, the run directory (train and val images) and the fused input size. Makes: an
``OodModel`` and ``ood_nodes``, the fused graph's ``ood_score`` [N], verified against ``OodModel.score``.
Per member, on its pooled last feature map x (k = min(32, n_train // 4, C) principal directions P):
a = class-conditional Mahalanobis distance of z = (x - mean) P (Ledoit-Wolf within-class covariance) / k,
b = the off-subspace residual |x - mean - z P^T|^2 / its training mean; s_m = max(a, b), each over its
median on held-out train images. The score is the mean of s_m; the threshold the ``quantile`` of held-out
scores (cross-fitted train folds + val: images the statistics that scored them did not see).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cxr.errors import DataError, DecodeError, VerificationError
from cxr.fuse.class_maps import pooled_source, reduce_node
from cxr.fuse.members import MemberModel, graph_spec
from cxr.fuse.resize import member_input, probe_order
from cxr.session import cpu_session as session
from cxr.spec import INPUT_IMAGE, OUTPUT_OOD_SCORE

log = logging.getLogger(__name__)

POOLED = "pooled_features"
QUANTILE = 0.97  # of held-out scores: about 3 in 100 ordinary radiographs refused (benchmarks/README.md)
FOLDS = 5
MAX_COMPONENTS = 32
RULE = (  # the quantile is in the card beside it
    "per member: a = class-conditional Mahalanobis distance (Ledoit-Wolf within-class covariance) in the top-k "
    "PCA subspace of its pooled training features, over k; b = the off-subspace residual over its training "
    "mean; member score = max(a / median of a, b / median of b), medians on held-out train images; "
    "ensemble score = mean over members; threshold = the given quantile (default 0.97, split-conformal) of "
    "held-out scores: each train image scored by statistics fitted on the other folds, each val image by the "
    "final ones; above it: not assessable (out_of_distribution)"
)


@dataclass(frozen=True)
class MemberOod:
    name: str
    feature: str  # the member's tensor that is pooled (its last feature map)
    mean: np.ndarray  # [C]
    components: np.ndarray  # P [C, k]
    whiten: np.ndarray  # S^-1/2 [k, k]
    centres: np.ndarray  # class means of z [K', k] (classes with >= 2 training images)
    residual_scale: float  # rho
    scale_in: float = 1.0  # median of a on the validation images
    scale_off: float = 1.0  # median of b on the validation images

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    def parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) [N] for pooled features ``x`` [N, C]: in-subspace and off-subspace distances."""
        xc = np.asarray(x, np.float64) - self.mean
        z = xc @ self.components
        u = z @ self.whiten
        v = self.centres @ self.whiten
        d2 = ((u[:, None, :] - v[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        r2 = ((xc - z @ self.components.T) ** 2).sum(axis=1) / self.residual_scale
        return d2 / self.k, r2

    def score(self, x: np.ndarray) -> np.ndarray:
        """[N] s_m: the larger of the two distances, each over its validation median."""
        a, b = self.parts(x)
        return np.maximum(a / self.scale_in, b / self.scale_off)


@dataclass(frozen=True)
class OodModel:
    members: tuple[MemberOod, ...]
    threshold: float
    n_train: int
    n_val: int
    val_flagged: int
    quantile: float = QUANTILE
    folds: int = 0  # train folds the held-out scores came from (0: none recorded)
    n_held_out: int = 0  # held-out scores the threshold is a quantile of: cross-fitted train + val
    held_out_refused: int = 0  # of them above the threshold
    false_refusal_ci: tuple[float, float] = (0.0, 1.0)  # Wilson 95% interval of held_out_refused / n_held_out
    check_images: np.ndarray | None = None  # a few validation images (the fused graph's uint8 input)
    check_scores: np.ndarray | None = None  # their scores computed here, in numpy

    def score(self, pooled: Sequence[np.ndarray]) -> np.ndarray:
        """[N] ensemble score from each member's pooled features (the members' order)."""
        return np.mean([m.score(x) for m, x in zip(self.members, pooled, strict=True)], axis=0)

    def to_card(self) -> dict[str, Any]:
        return {
            "output": OUTPUT_OOD_SCORE,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "rule": RULE,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "val_flagged": self.val_flagged,
            "folds": self.folds,
            "false_refusal": {
                "estimate": self.held_out_refused / self.n_held_out if self.n_held_out else None,
                "ci95": list(self.false_refusal_ci),
                "refused": self.held_out_refused,
                "of": self.n_held_out,
            },
            "members": {
                m.name: {"components": m.k, "classes": int(m.centres.shape[0])} for m in self.members
            },
        }


def with_pooled_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str] | None:
    """``model`` plus output ``pooled_features`` [N, C] (float32), and the tensor it pools; None: no pooling."""
    feature = pooled_source(model)
    if feature is None:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.extend(pooled_nodes(feature, POOLED, "ood/"))
    out.graph.output.append(helper.make_tensor_value_info(POOLED, TensorProto.FLOAT, None))
    return out, feature


def pooled_nodes(feature: str, out: str, tag: str) -> list[onnx.NodeProto]:
    """Cast the feature map to float32 (FP16 members) and average it over the spatial axes -> [N, C]."""
    return [
        helper.make_node("Cast", [feature], [f"{tag}feature_f32"], to=TensorProto.FLOAT, name=f"{tag}cast"),
        helper.make_node(
            "GlobalAveragePool", [f"{tag}feature_f32"], [f"{tag}pooled4"], name=f"{tag}global_pool"
        ),
        helper.make_node("Flatten", [f"{tag}pooled4"], [out], axis=1, name=f"{tag}flatten"),
    ]


def fit_ood(
    members: Sequence[MemberModel],
    run_dir: Path,
    fused_size: tuple[int, int],
    *,
    max_train: int = 2000,
    max_val: int = 2000,
    quantile: float = QUANTILE,
    folds: int = FOLDS,
    seed: int = 0,
    threads: int | None = None,
) -> OodModel | str:
    """Fit the score on ``run_dir``'s train images and its threshold on held-out scores; a string: why not."""
    from cxr.data.manifest import load_manifest

    probes = [with_pooled_output(m.model) for m in members]
    missing = [m.name for m, p in zip(members, probes, strict=True) if p is None]
    if missing:
        return f"member(s) {', '.join(missing)} have no global average pooling to take features from"
    manifest = load_manifest(Path(run_dir) / "manifest.csv", check_files=False)
    rng = np.random.default_rng(seed)
    train = _sample(manifest, "train", max_train, rng)
    val = _sample(manifest, "val", max_val, rng)
    if len(train) < 8 or len(val) < 2:
        return f"too few images ({len(train)} train, {len(val)} val) in {run_dir}/manifest.csv"
    classes = list(members[0].meta.classes)
    x_train, y_train, _ = _features(members, probes, train, fused_size, threads, classes)
    x_val, _, val_images = _features(members, probes, val, fused_size, threads, classes)
    named = [(m.name, probe[1]) for m, probe in zip(members, probes, strict=True) if probe is not None]
    ood = fit_scores(named, x_train, y_train, x_val, quantile=quantile, folds=folds, rng=rng)
    n_check = min(8, len(x_val[0]))
    return replace(
        ood, check_images=val_images[:n_check], check_scores=ood.score([x[:n_check] for x in x_val])
    )


def fit_scores(
    named: Sequence[tuple[str, str]],
    x_train: Sequence[np.ndarray],
    y_train: np.ndarray,
    x_val: Sequence[np.ndarray],
    *,
    quantile: float = QUANTILE,
    folds: int = FOLDS,
    rng: np.random.Generator,
) -> OodModel:
    """The score fitted on all of ``x_train`` (per member: [N, C] features, ``named`` (name, feature)), its
    threshold the conformal ``quantile`` of held-out scores: each train image scored by the statistics of
    the ``folds`` - 1 other folds, and every val image by the final ones, with the false-refusal rate this
    threshold gives on them and its Wilson interval."""
    fold = rng.permutation(len(y_train)) % max(2, min(folds, len(y_train) // 4))
    held_a = [np.empty(len(y_train)) for _ in named]
    held_b = [np.empty(len(y_train)) for _ in named]
    for k in np.unique(fold):
        fit_on, held = fold != k, fold == k
        for i, ((name, feature), x) in enumerate(zip(named, x_train, strict=True)):
            held_a[i][held], held_b[i][held] = _fit_member(name, feature, x[fit_on], y_train[fit_on]).parts(
                x[held]
            )
    final = tuple(
        replace(
            _fit_member(name, feature, x, y_train),
            scale_in=_positive(np.median(a)),
            scale_off=_positive(np.median(b)),
        )
        for (name, feature), x, a, b in zip(named, x_train, held_a, held_b, strict=True)
    )
    train_scores = np.mean(
        [np.maximum(a / m.scale_in, b / m.scale_off) for m, a, b in zip(final, held_a, held_b, strict=True)],
        axis=0,
    )
    val_scores = np.mean([m.score(x) for m, x in zip(final, x_val, strict=True)], axis=0)
    held_out = np.concatenate([train_scores, val_scores])
    rank = min(len(held_out), int(np.ceil((len(held_out) + 1) * quantile)))  # split-conformal order statistic
    threshold = float(np.sort(held_out)[rank - 1])
    refused = int((held_out > threshold).sum())
    return OodModel(
        final, threshold, len(y_train), len(val_scores), int((val_scores > threshold).sum()), quantile,
        folds=int(fold.max()) + 1, n_held_out=len(held_out), held_out_refused=refused,
        false_refusal_ci=_wilson(refused, len(held_out)),
    )  # fmt: skip


def _wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def check_ood(
    fused: Path, ood: OodModel, tolerance: float, threads: int | None, *, strict: bool = True
) -> float:
    """The graph's ``ood_score`` on the kept validation images vs numpy; the max relative difference.

    Not ``strict`` (an FP16/INT8 variant, whose features drift from the FP32 ones the score was fitted
    on): logged instead of raised."""
    if ood.check_images is None or ood.check_scores is None:
        return 0.0
    got = session(fused, threads).run([OUTPUT_OOD_SCORE], {INPUT_IMAGE: ood.check_images})[0]
    rel = float(np.max(np.abs(got - ood.check_scores) / np.maximum(1.0, np.abs(ood.check_scores))))
    if rel > tolerance and not strict:
        log.warning(
            "%s: its out-of-distribution score drifts by %.3g (relative) from FP32's", fused.name, rel
        )
    elif rel > tolerance:
        raise VerificationError(
            f"{fused}: the in-graph out-of-distribution score differs from the numpy reference by {rel:.3g} "
            f"(relative; tolerance {tolerance:g})",
            hint="report this as a cxr bug with the member files; fuse with --no-ood meanwhile",
            path=fused,
        )
    return rel


def _positive(value: float) -> float:
    return float(value) if value > 1e-12 else 1.0


def _sample(manifest: Any, split: str, limit: int, rng: np.random.Generator) -> list[tuple[Path, str]]:
    rows = list(manifest.split(split))
    if len(rows) > limit:
        rows = [rows[int(i)] for i in sorted(rng.choice(len(rows), size=limit, replace=False))]
    return [(manifest.abspath(r), r.label) for r in rows]


def _features(
    members: Sequence[MemberModel],
    probes: Sequence[tuple[onnx.ModelProto, str] | None],
    items: Sequence[tuple[Path, str]],
    fused_size: tuple[int, int],
    threads: int | None,
    classes: Sequence[str],
    batch: int = 16,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each member's pooled features [N, C] of the readable ``items``, their class indices [N] and the
    images as the fused graph's uint8 input [N, 1, H, W]."""
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.preprocess import to_model_input

    grays, labels = [], []
    for path, label in items:
        try:
            grays.append(decode_gray(path))
            labels.append(classes.index(label))
        except (DecodeError, OSError) as e:
            log.warning("OOD fit: skipping %s: %s", path, e)
    if not grays:
        raise DataError(
            "no readable image to fit the out-of-distribution score on", hint="check the manifest"
        )
    raw = to_model_input(grays, graph_spec(members, fused_size), normalized=False)
    images = raw.astype(np.float32)
    feats: list[np.ndarray] = []
    for m, probe in zip(members, probes, strict=True):
        if probe is None:
            continue
        sess = session(probe[0].SerializeToString(), threads)
        order = "hv" if m.input_size == fused_size else probe_order(fused_size, m.input_size)[0]
        chunks = []
        inp = sess.get_inputs()[0]
        for i in range(0, len(images), batch):
            x = member_input(images[i : i + batch], m.input_size, order, m.meta.preprocess, inp.type)
            chunks.append(sess.run([POOLED], {inp.name: x})[0].astype(np.float64))
        feats.append(np.concatenate(chunks))
    return feats, np.array(labels), raw


def _fit_member(name: str, feature: str, x: np.ndarray, y: np.ndarray) -> MemberOod:
    from sklearn.covariance import LedoitWolf

    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    rank = int((s > s[0] * 1e-6).sum()) if s.size and s[0] > 0 else 1
    k = max(1, min(MAX_COMPONENTS, len(x) // 4, x.shape[1], rank))
    components = vt[:k].T
    z = xc @ components
    present = [c for c in np.unique(y) if (y == c).sum() >= 2] or list(np.unique(y))
    centres = np.stack([z[y == c].mean(axis=0) for c in present])
    within = np.concatenate([z[y == c] - z[y == c].mean(axis=0) for c in present])
    cov = LedoitWolf().fit(within).covariance_
    evals, evecs = np.linalg.eigh(cov)
    whiten = evecs @ np.diag(1.0 / np.sqrt(np.clip(evals, 1e-12, None))) @ evecs.T
    residual = ((xc - z @ components.T) ** 2).sum(axis=1)
    rho = float(residual.mean()) if residual.mean() > 1e-12 else 1.0
    return MemberOod(name, feature, mean, components, whiten, centres, rho)


def ood_nodes(
    ood: OodModel, opset: int
) -> tuple[list[onnx.NodeProto], list[TensorProto], onnx.ValueInfoProto]:
    """Nodes from the members' feature maps to ``ood_score`` (see the module docstring)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    scores: list[str] = []
    for m in ood.members:
        t = f"ood/{m.name}/"

        def const(name: str, value: np.ndarray, t: str = t) -> str:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"{t}{name}"))
            return f"{t}{name}"

        nodes += pooled_nodes(f"{m.name}/{m.feature}", f"{t}pooled", t)
        axis1 = f"{t}axis1"
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axis1))
        mk = helper.make_node
        nodes += [
            mk("Sub", [f"{t}pooled", const("mean", m.mean)], [f"{t}xc"], name=f"{t}centre"),
            mk("MatMul", [f"{t}xc", const("components", m.components)], [f"{t}z"], name=f"{t}project"),
            mk("MatMul", [f"{t}z", const("whiten", m.whiten)], [f"{t}u"], name=f"{t}whiten"),
            mk("Unsqueeze", [f"{t}u", axis1], [f"{t}u3"], name=f"{t}u3"),
            mk("Sub", [f"{t}u3", const("centres", m.centres @ m.whiten)], [f"{t}diff"], name=f"{t}diff"),
            mk("Mul", [f"{t}diff", f"{t}diff"], [f"{t}diff2"], name=f"{t}diff2"),
            reduce_node("ReduceSum", f"{t}diff2", [2], f"{t}d2_classes", opset, inits, keepdims=0),
            reduce_node("ReduceMin", f"{t}d2_classes", [1], f"{t}d2", opset, inits, keepdims=0),
            mk("MatMul", [f"{t}z", const("components_t", m.components.T)], [f"{t}back"], name=f"{t}back"),
            mk("Sub", [f"{t}xc", f"{t}back"], [f"{t}resid"], name=f"{t}resid"),
            mk("Mul", [f"{t}resid", f"{t}resid"], [f"{t}resid2"], name=f"{t}resid2"),
            reduce_node("ReduceSum", f"{t}resid2", [1], f"{t}r2_raw", opset, inits, keepdims=0),
            mk(
                "Div",
                [f"{t}r2_raw", const("off_scale", np.array(m.residual_scale * m.scale_off))],
                [f"{t}off"],
                name=f"{t}off",
            ),  # fmt: skip
            mk("Div", [f"{t}d2", const("in_scale", np.array(m.k * m.scale_in))], [f"{t}in"], name=f"{t}in"),
            mk("Max", [f"{t}in", f"{t}off"], [f"{t}score"], name=f"{t}score"),
        ]
        scores.append(f"{t}score")
    nodes.append(helper.make_node("Mean", scores, [OUTPUT_OOD_SCORE], name="ood/mean"))
    return nodes, inits, helper.make_tensor_value_info(OUTPUT_OOD_SCORE, TensorProto.FLOAT, ["batch"])


def located(ood: OodModel, models: dict[str, onnx.ModelProto]) -> OodModel | None:
    """``ood`` with each member's feature tensor as named in ``models`` (a variant may rename it); None:
    a member of ``ood`` is missing or has no pooling there."""
    members = []
    for m in ood.members:
        feature = pooled_source(models[m.name]) if m.name in models else None
        if feature is None:
            return None
        members.append(replace(m, feature=feature))
    return replace(ood, members=tuple(members))
