"""A learned out-of-distribution score from the members' pooled features, fitted at fuse time.

Takes: the checked members, the run directory (its manifest's train and val images) and the fused input
size. Makes: an ``OodModel``: per member the parameters of a class-conditional Mahalanobis distance
(Lee et al., 2018) in a PCA subspace of its pooled features plus the off-subspace residual, and the
threshold chosen on the validation split; ``score`` computes it in numpy (the reference the in-graph
version, ``cxr.fuse.ood_graph``, is verified against).

Per member m, with x its pooled last feature map (the global average pooling's output, C values):
  z = (x - mean) P                         P: the top k principal directions of the training features
  d2 = min over classes c of (z - mu_c)^T S^-1 (z - mu_c)   S: the within-class covariance of z
                                                          (Ledoit-Wolf shrinkage, scikit-learn)
  a = d2 / k                               how far inside the subspace the training images span
  b = |x - mean - z P^T|^2 / rho           how far off it (rho: the residual's mean on the training images)
  s_m = max(a / median_val(a), b / median_val(b))   about 1 for images like the validation ones
Two tests in one: an image can be unusual within the span of the training features (a) or outside it (b);
on real radiographs with ImageNet Xception features, photographs and drawings differ mostly in b,
inverted radiographs in both (measured, benchmarks/README.md). The ensemble's score is the mean of s_m
over the members. k = min(32, n_train // 4, C).
Threshold (the rule written into the metadata): the 99th percentile (``quantile``) of the validation images'
scores (linear interpolation), so about 1 in 100 radiographs like the validation ones is flagged; an image
above it is marked not assessable (``out_of_distribution``), its probabilities still given. A small
validation split estimates that percentile poorly (of 45 images it is about the largest): the rehearsal's
test split had 13 of 90 radiographs above it (benchmarks/README.md); ``cxr fuse --ood-quantile`` trades
refusals of real images against missed photographs.
Training images: at most ``max_train`` (seeded sample), validation at most ``max_val``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from cxr.errors import DataError, DecodeError
from cxr.fuse.class_maps import pooled_source
from cxr.fuse.members import MemberModel
from cxr.fuse.resize import member_input, probe_order
from cxr.session import cpu_session as session
from cxr.spec import INPUT_IMAGE, OUTPUT_OOD_SCORE, PreprocessSpec

log = logging.getLogger(__name__)

POOLED = "pooled_features"
QUANTILE = 0.99
MAX_COMPONENTS = 32
RULE = (  # the quantile is in the card beside it
    "per member: a = class-conditional Mahalanobis distance (Ledoit-Wolf within-class covariance) in the top-k "
    "PCA subspace of its pooled training features, over k; b = the off-subspace residual over its training "
    "mean; member score = max(a / median of a on val, b / median of b on val); ensemble score = mean over "
    "members; threshold = the given quantile (default 0.99) of the validation images' scores; above it: not "
    "assessable (out_of_distribution)"
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
        """[N] s_m (see the module docstring)."""
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
    seed: int = 0,
    threads: int | None = None,
) -> OodModel | str:
    """Fit the score on ``run_dir``'s train images and its threshold on the val images; a string: why not."""
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
    fitted = tuple(
        _fit_member(m.name, probe[1], x, y_train)
        for m, probe, x in zip(members, probes, x_train, strict=True)
        if probe is not None
    )
    scaled = []
    for m, x in zip(fitted, x_val, strict=True):
        a, b = m.parts(x)
        scaled.append(replace(m, scale_in=_positive(np.median(a)), scale_off=_positive(np.median(b))))
    fitted = tuple(scaled)
    val_scores = OodModel(fitted, 0.0, len(y_train), len(x_val[0]), 0).score(x_val)
    threshold = float(np.quantile(val_scores, quantile))
    flagged = int((val_scores > threshold).sum())
    n_check = min(8, len(val_scores))
    return OodModel(
        fitted, threshold, len(y_train), len(val_scores), flagged, quantile, val_images[:n_check],
        val_scores[:n_check],
    )  # fmt: skip


def check_ood(
    fused: Path, ood: OodModel, tolerance: float, threads: int | None, *, strict: bool = True
) -> float:
    """The graph's ``ood_score`` on the kept validation images vs numpy; the max relative difference.

    Not ``strict`` (an FP16/INT8 variant, whose features drift from the FP32 ones the score was fitted
    on): logged instead of raised."""
    from cxr.errors import VerificationError

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
    first = members[0].meta.preprocess
    spec = PreprocessSpec(input_size=fused_size, channels=first.channels, mean=first.mean, std=first.std)
    raw = to_model_input(grays, spec, normalized=False)
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
