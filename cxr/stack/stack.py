"""`cxr train stack`: fit the meta-learner on predictions for images the base models never trained on.

Takes: a run directory with ``manifest.csv`` and ``members/<name>/predictions/{val,test}.csv`` (``MetaConfig``).
Makes: ``RUN_DIR/stack/meta.json`` (everything about the fit), ``meta.npz`` (the fitted arrays, no pickle)
and ``meta.onnx`` (its skl2onnx conversion, verified against ``predict_proba``) -> ``MetaResult``.

Features are the members' class probabilities in a fixed member order (member-major, M x K columns).
The meta-training set is the validation split (blending), or with ``source="blend"`` a separate blend split
(``cxr data split --blend``) that nothing else uses: every row is checked against the manifest, and a
training- or test-split image is refused (``LeakageError``). The validation split also drives the members'
early stopping and the choice of the "best member", which the evaluation report says. Hyper-parameters are
chosen by stratified K-fold cross-validation on the meta-training set (mean log loss); the cross-validated
predictions give the meta-learner's validation metrics. The test split's metrics are recorded for the
model card only. Labels are class indices, so ``classes_`` follows the class-list order; a class absent
from the meta-training set gets probability 0 (and a warning).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxr import __version__
from cxr.data.manifest import load_manifest
from cxr.errors import ConfigError, DataError
from cxr.metrics import classification_metrics
from cxr.stack.features import (
    FEATURE_LAYOUT,
    META_JSON,
    META_NPZ,
    META_ONNX,
    MetaData,
    check_split_membership,
    discover_members,
    load_split,
    read_best,
    read_meta_json,
)
from cxr.stack.store import load_estimator, save_estimator

log = logging.getLogger(__name__)

Source = Literal["val", "blend"]


@dataclass(frozen=True)
class MetaConfig:
    run_dir: Path
    members: tuple[str, ...] | None = None  # None: every folder under RUN_DIR/members, sorted by name
    source: Source = "val"
    estimator: str = "logistic_regression"
    params: Mapping[str, Any] = field(default_factory=dict)  # fixed parameters, override the table's
    grid: Mapping[str, tuple[Any, ...]] | None = None  # None: the table's grid; {} : no search
    cv_folds: int = 5
    seed: int = 0
    opset: int = 17
    out_dir: Path | None = None  # default RUN_DIR/stack

    def __post_init__(self) -> None:
        from cxr.stack.estimators import resolve_kind

        resolve_kind(self.estimator)
        if self.source not in ("val", "blend"):
            raise ConfigError(
                f"meta-training source {self.source!r} is not allowed",
                hint="use val (blending on the validation split) or blend (a separate blend split, "
                "`cxr data split --blend`), never train or test",
            )
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be at least 2, got {self.cv_folds}")
        if not 9 <= self.opset <= 21:
            raise ConfigError(f"opset {self.opset} is out of range", hint="use the members' opset (17)")

    @property
    def stack_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(self.run_dir) / "stack"


@dataclass(frozen=True)
class MetaResult:
    stack_dir: Path
    meta_json: Path
    estimator_path: Path
    onnx_path: Path
    members: tuple[str, ...]
    classes: tuple[str, ...]
    classes_seen: tuple[str, ...]
    estimator: str
    params: dict[str, Any]
    cv_score: float  # mean cross-validated log loss of the chosen parameters (lower is better)
    cv_metrics: dict[str, Any]
    n_train: int
    onnx_max_abs_diff: float
    warnings: tuple[str, ...] = ()


def full_proba(est: Any, features: np.ndarray, k: int) -> np.ndarray:
    """``predict_proba`` widened to all K classes (0 for a class the estimator never saw)."""
    p = est.predict_proba(features)
    out = np.zeros((p.shape[0], k), dtype=np.float64)
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0))))


def _candidates(grid: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    from itertools import product

    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in product(*(grid[k] for k in keys))]


def _cv_splits(y: np.ndarray, folds: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    notes: list[str] = []
    if y.size < 4:
        raise DataError(
            f"only {y.size} meta-training image(s): too few to choose the meta-learner's regularisation",
            hint="use more validation images (a larger data set, or a larger validation fraction)",
        )
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        n_splits = min(folds, y.size // 2)
        notes.append(
            f"cross-validation is not stratified ({n_splits} plain folds): a class has a single "
            "meta-training image"
        )
        plain = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(plain.split(np.zeros((y.size, 1)))), notes
    n_splits = max(2, min(folds, smallest))
    if n_splits < folds:
        notes.append(
            f"cross-validation uses {n_splits} folds instead of {folds}: the rarest class has {smallest} "
            "meta-training image(s)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros((y.size, 1)), y)), notes


def _fit(cls: type, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    est = cls(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    return est


def cross_validate(
    cls: type,
    fixed: Mapping[str, Any],
    grid: Mapping[str, tuple[Any, ...]],
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    *,
    folds: int,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray, list[str]]:
    """(best params, score per candidate, cross-validated probabilities of the best, notes)."""
    splits, notes = _cv_splits(y, folds, seed)
    scores: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], np.ndarray] | None = None
    for cand in _candidates(grid) or [{}]:
        params = {**fixed, **cand}
        oof = np.zeros((y.size, k), dtype=np.float64)
        for train_idx, held_idx in splits:
            est = _fit(cls, params, x[train_idx], y[train_idx])
            oof[held_idx] = full_proba(est, x[held_idx], k)
        loss = _log_loss(y, oof)
        scores.append({"params": cand, "log_loss": loss})
        if best is None or loss < best[0] - 1e-12:
            best = (loss, params, oof)
    assert best is not None  # the candidate list is never empty
    return best[1], scores, best[2], notes


def _metrics_dict(y: np.ndarray, p: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    m = classification_metrics(y, p, classes)
    return {
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "log_loss": _log_loss(y, p),
        "ece": m.ece,
        "n": m.n,
    }


def _test_metrics(cfg: MetaConfig, members: tuple[str, ...], est: Any, k: int) -> dict[str, Any] | None:
    """The stacked ensemble's test-split metrics, recorded for the model card only (never used to choose).

    The fused graph is verified top-1 identical to these predictions at `cxr fuse`, so they hold for it.
    """
    try:
        test = load_split(cfg.run_dir, members, "test")
    except DataError as e:
        log.info("no test metrics for the model card: %s", e.message)
        return None
    if test.labels.size == 0:
        return None
    return _metrics_dict(test.labels, full_proba(est, test.features, k), test.classes)


def load_meta_training_set(cfg: MetaConfig, members: tuple[str, ...]) -> MetaData:
    """The checked meta-training set: predictions for val or blend images, which no member trained on."""
    manifest = load_manifest(Path(cfg.run_dir) / "manifest.csv", check_files=False)
    if cfg.source not in manifest.splits():
        raise DataError(
            f"the run's manifest has no {cfg.source} split",
            hint="re-split with `cxr data split --blend 0.1` (and retrain), or use --source val",
        )
    data = load_split(cfg.run_dir, members, cfg.source, manifest=manifest)
    what = f"meta-training set ({cfg.source} predictions)"
    check_split_membership(data.paths, manifest, {cfg.source}, what=what)
    return data


def fit_meta(cfg: MetaConfig) -> MetaResult:
    """Fit, save (JSON + npz), convert to ONNX and verify the meta-learner (see the module docstring)."""
    from sklearn import __version__ as sklearn_version

    from cxr.stack.estimators import resolve_kind
    from cxr.stack.to_onnx import convert_meta

    members = tuple(cfg.members) if cfg.members else discover_members(cfg.run_dir)
    data = load_meta_training_set(cfg, members)
    classes = data.classes
    k = len(classes)
    x, y = data.features, data.labels
    notes: list[str] = []
    seen = np.unique(y)
    if seen.size < 2:
        raise DataError(
            f"the meta-training set ({data.split}, {y.size} images) holds only class {classes[int(seen[0])]}",
            hint="a meta-learner needs at least two classes: use a larger validation split",
        )
    absent = [classes[i] for i in range(k) if i not in set(seen.tolist())]
    if absent:
        notes.append(
            f"class(es) {', '.join(absent)} have no meta-training image: the meta-learner gives them probability 0"
        )
    kind = resolve_kind(cfg.estimator)
    fixed = {**kind.fixed, **dict(cfg.params)}
    grid = kind.grid if cfg.grid is None else cfg.grid
    grid = {p: v for p, v in grid.items() if p not in cfg.params}
    best, scores, cv_probs, cv_notes = cross_validate(
        kind.cls, fixed, grid, x, y, k, folds=cfg.cv_folds, seed=cfg.seed
    )
    notes += cv_notes
    est = _fit(kind.cls, best, x, y)
    cv_score = min(s["log_loss"] for s in scores)
    cv_metrics = _metrics_dict(y, cv_probs, classes)
    train_metrics = _metrics_dict(y, full_proba(est, x, k), classes)

    out = cfg.stack_dir
    out.mkdir(parents=True, exist_ok=True)
    description = save_estimator(est, out / META_NPZ, x)
    chosen = {p: best[p] for p in sorted(best)}
    info = {
        "member_order": list(members),
        "member_checkpoints": list(data.checkpoints),
        "classes": list(classes),
        "classes_seen": [classes[int(i)] for i in seen],
        "feature_layout": FEATURE_LAYOUT,
        "type": cfg.estimator,
        "class_name": f"{kind.cls.__module__}.{kind.cls.__name__}",
        "params": chosen,
        "cv_score": cv_score,
        "cv_metric": "log_loss",
        "source": cfg.source,
        "val_metrics": cv_metrics,
        "test_metrics": _test_metrics(cfg, members, est, k),
    }
    conv = convert_meta(
        est,
        n_members=len(members),
        classes=classes,
        out=out / META_ONNX,
        opset=cfg.opset,
        check_features=x,
        info=info,
    )
    meta = {
        **info,
        "n_train": int(y.size),
        "train_class_counts": {c: int(np.sum(y == i)) for i, c in enumerate(classes)},
        "manifest_digest": data.manifest_digest,
        "members": [
            {
                "name": name,
                "checkpoint_sha256": data.checkpoints[i],
                "timm_name": read_best(cfg.run_dir, name).get("timm_name"),
                "metrics": read_best(cfg.run_dir, name).get("metrics"),
            }
            for i, name in enumerate(members)
        ],
        "cv": {
            "folds": cfg.cv_folds,
            "seed": cfg.seed,
            "grid": {p: list(v) for p, v in grid.items()},
            "scores": scores,
        },
        "train_metrics_in_sample": train_metrics,
        "estimator": {**description, "file": META_NPZ},
        "onnx": {
            "file": META_ONNX,
            "opset": conv.opset,
            "ir_version": conv.ir_version,
            "sha256": conv.sha256,
            "max_abs_diff_vs_predict_proba": conv.max_abs_diff,
        },
        "warnings": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "sklearn_version": sklearn_version,
    }
    (out / META_JSON).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    for n in notes:
        log.warning("%s", n)
    return MetaResult(
        stack_dir=out,
        meta_json=out / META_JSON,
        estimator_path=out / META_NPZ,
        onnx_path=conv.path,
        members=members,
        classes=classes,
        classes_seen=tuple(info["classes_seen"]),
        estimator=cfg.estimator,
        params=chosen,
        cv_score=cv_score,
        cv_metrics=cv_metrics,
        n_train=int(y.size),
        onnx_max_abs_diff=conv.max_abs_diff,
        warnings=tuple(notes),
    )


def load_meta_estimator(stack_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(fitted estimator, meta.json) from a stack directory, without unpickling anything."""
    meta = read_meta_json(stack_dir)
    return load_estimator(
        meta["estimator"], Path(stack_dir) / str(meta["estimator"].get("file", META_NPZ))
    ), meta
