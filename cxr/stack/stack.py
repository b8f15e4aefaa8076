"""`cxr stack`: fit the meta-learner on predictions for images the base models never trained on.

Takes: a run directory with member predictions (``MetaConfig``). Makes: ``stack/meta.json`` (the fit),
``meta.npz`` (fitted arrays, no pickle) and ``meta.onnx`` (verified, with its temperature built in) ->
``MetaResult``. Features: member probabilities, member-major. Rows: the val (or blend) split only, checked
against the manifest (``LeakageError``); parameters by stratified K-fold log loss; temperature and
operating points on the cross-validated probabilities.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cxr import __version__
from cxr.data.manifest import load_manifest
from cxr.errors import ConfigError, DataError
from cxr.metrics import classification_metrics, log_loss
from cxr.stack.calibrate import MIN_CALIBRATION_PREDICTIONS
from cxr.stack.estimators import (
    EstimatorKind,
    cross_validate,
    fit_quietly,
    full_proba,
    load_estimator,
    resolve_kind,
    save_estimator,
)
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

if TYPE_CHECKING:
    from cxr.stack.to_onnx import MetaOnnxResult

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
    calibrate: bool = True  # temperature scaling on the cross-validated predictions (cxr.stack.calibrate)
    min_calibration_predictions: int = MIN_CALIBRATION_PREDICTIONS  # fewer: T = 1, and the record says why
    target_sensitivity: Mapping[str, float] | None = None  # operating points; None: 95% for every class

    def __post_init__(self) -> None:
        resolve_kind(self.estimator)
        if self.source not in ("val", "blend"):
            raise ConfigError(
                f"meta-training source {self.source!r} is not allowed",
                hint="use val (blending on the validation split) or blend (a separate blend split, "
                "`cxr data split --blend`), never train or test",
            )
        if self.min_calibration_predictions < 2:
            raise ConfigError(
                f"min_calibration_predictions must be at least 2, got {self.min_calibration_predictions}",
                hint=f"keep the default ({MIN_CALIBRATION_PREDICTIONS})",
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


def _metrics_dict(y: np.ndarray, p: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    m = classification_metrics(y, p, classes)
    return {
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "log_loss": log_loss(y, p),
        "ece": m.ece,
        "n": m.n,
    }


def _test_metrics(
    cfg: MetaConfig, members: tuple[str, ...], est: Any, k: int, temperature: float = 1.0
) -> dict[str, Any] | None:
    """The stacked ensemble's (calibrated) test-split metrics, for the model card only (never used to choose)."""
    try:
        test = load_split(cfg.run_dir, members, "test")
    except DataError as e:
        log.info("no test metrics for the model card: %s", e.message)
        return None
    if test.labels.size == 0:
        return None
    from cxr.calibration import apply_temperature

    probs = apply_temperature(full_proba(est, test.features, k), temperature)
    return _metrics_dict(test.labels, probs, test.classes)


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


@dataclass(frozen=True)
class _Fit:
    """The meta-learner chosen by cross-validation and refitted on the whole meta-training set."""

    est: Any
    kind: EstimatorKind
    params: dict[str, Any]  # the chosen parameters, sorted by name
    grid: Mapping[str, tuple[Any, ...]]  # the grid searched (without the fixed parameters)
    scores: list[dict[str, Any]]  # log loss per candidate
    cv_score: float
    cv_metrics: dict[str, Any]
    train_metrics: dict[str, Any]  # in-sample, for the record only
    notes: list[str]
    cv_probs: np.ndarray  # cross-validated probabilities of the chosen parameters (the calibration set)


def fit_meta(cfg: MetaConfig) -> MetaResult:
    """Fit, save (JSON + npz), convert to ONNX and verify the meta-learner (see the module docstring)."""
    from cxr.stack.to_onnx import convert_meta

    members = tuple(cfg.members) if cfg.members else discover_members(cfg.run_dir)
    data = load_meta_training_set(cfg, members)
    x = data.features
    seen, notes = _classes_seen(data)
    fit = _choose_and_fit(cfg, data, x)
    notes += fit.notes
    temperature, calibration = _calibration(cfg, data, fit)
    if skipped := calibration["calibration"].get("skipped"):
        notes.append(skipped)
    out = cfg.stack_dir
    out.mkdir(parents=True, exist_ok=True)
    description = save_estimator(fit.est, out / META_NPZ, x)
    info = {**_model_info(cfg, members, data, seen, fit, temperature), **calibration}
    conv = convert_meta(
        fit.est,
        n_members=len(members),
        classes=data.classes,
        out=out / META_ONNX,
        opset=cfg.opset,
        check_features=x,
        info=info,
        temperature=temperature,
    )
    meta = _meta_record(cfg, members, data, info, fit, description, conv, notes)
    (out / META_JSON).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    for n in notes:
        log.warning("%s", n)
    return MetaResult(
        stack_dir=out,
        meta_json=out / META_JSON,
        estimator_path=out / META_NPZ,
        onnx_path=conv.path,
        members=members,
        classes=data.classes,
        classes_seen=tuple(info["classes_seen"]),
        estimator=cfg.estimator,
        params=fit.params,
        cv_score=fit.cv_score,
        cv_metrics=fit.cv_metrics,
        n_train=int(data.labels.size),
        onnx_max_abs_diff=conv.max_abs_diff,
        warnings=tuple(notes),
    )


def _classes_seen(data: MetaData) -> tuple[np.ndarray, list[str]]:
    """The class indices the meta-training set holds (at least two), and a note naming any absent class."""
    classes, y = data.classes, data.labels
    seen = np.unique(y)
    if seen.size < 2:
        raise DataError(
            f"the meta-training set ({data.split}, {y.size} images) holds only class {classes[int(seen[0])]}",
            hint="a meta-learner needs at least two classes: use a larger validation split",
        )
    absent = [classes[i] for i in range(len(classes)) if i not in set(seen.tolist())]
    notes: list[str] = []
    if absent:
        notes.append(
            f"class(es) {', '.join(absent)} have no meta-training image: the meta-learner gives them probability 0"
        )
    return seen, notes


def _choose_and_fit(cfg: MetaConfig, data: MetaData, x: np.ndarray) -> _Fit:
    """Choose the parameters by cross-validation on ``x``, then refit on all of it."""
    y, classes, k = data.labels, data.classes, len(data.classes)
    kind = resolve_kind(cfg.estimator)
    fixed = {**kind.fixed, **dict(cfg.params)}
    grid = kind.grid if cfg.grid is None else cfg.grid
    grid = {p: v for p, v in grid.items() if p not in cfg.params}
    best, scores, cv_probs, cv_notes = cross_validate(
        kind.cls, fixed, grid, x, y, k, folds=cfg.cv_folds, seed=cfg.seed
    )
    est = fit_quietly(kind.cls, best, x, y)
    return _Fit(
        est=est,
        kind=kind,
        params={p: best[p] for p in sorted(best)},
        grid=grid,
        scores=scores,
        cv_score=min(s["log_loss"] for s in scores),
        cv_metrics=_metrics_dict(y, cv_probs, classes),
        train_metrics=_metrics_dict(y, full_proba(est, x, k), classes),
        notes=cv_notes,
        cv_probs=cv_probs,
    )


def _calibration(cfg: MetaConfig, data: MetaData, fit: _Fit) -> tuple[float, dict[str, Any]]:
    """(temperature, the ``calibration`` and ``operating_points`` records) from the cross-fitted predictions;
    the operating points on the calibrated probabilities, which the graph outputs."""
    from cxr.calibration import apply_temperature
    from cxr.stack.calibrate import default_targets, fit_temperature, operating_points

    y, classes = data.labels, data.classes
    targets = dict(cfg.target_sensitivity) if cfg.target_sensitivity is not None else default_targets(classes)
    if cfg.calibrate:
        t = fit_temperature(y, fit.cv_probs, cfg.min_calibration_predictions)
        temperature, record = t.temperature, t.to_dict()
    else:
        temperature, record = 1.0, {"method": "none", "temperature": 1.0}
    points = operating_points(y, apply_temperature(fit.cv_probs, temperature), classes, targets)
    return temperature, {
        "calibration": record,
        "operating_points": {c: op.to_dict() for c, op in points.items()},
    }


def _model_info(
    cfg: MetaConfig,
    members: tuple[str, ...],
    data: MetaData,
    seen: np.ndarray,
    fit: _Fit,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """What the ONNX model's metadata and ``meta.json`` both record about the fit."""
    classes = data.classes
    return {
        "member_order": list(members),
        "member_checkpoints": list(data.checkpoints),
        "classes": list(classes),
        "classes_seen": [classes[int(i)] for i in seen],
        "feature_layout": FEATURE_LAYOUT,
        "type": cfg.estimator,
        "class_name": f"{fit.kind.cls.__module__}.{fit.kind.cls.__name__}",
        "params": fit.params,
        "cv_score": fit.cv_score,
        "cv_metric": "log_loss",
        "source": cfg.source,
        "val_metrics": fit.cv_metrics,
        "test_metrics": _test_metrics(cfg, members, fit.est, len(classes), temperature),
    }


def _meta_record(
    cfg: MetaConfig,
    members: tuple[str, ...],
    data: MetaData,
    info: dict[str, Any],
    fit: _Fit,
    description: dict[str, Any],
    conv: MetaOnnxResult,
    notes: list[str],
) -> dict[str, Any]:
    """``meta.json``: the model info plus the training set, members, search, files and versions."""
    from sklearn import __version__ as sklearn_version

    y = data.labels
    return {
        **info,
        "n_train": int(y.size),
        "train_class_counts": {c: int(np.sum(y == i)) for i, c in enumerate(data.classes)},
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
            "grid": {p: list(v) for p, v in fit.grid.items()},
            "scores": fit.scores,
        },
        "train_metrics_in_sample": fit.train_metrics,
        "estimator": {**description, "file": META_NPZ},
        "onnx": {
            "file": META_ONNX,
            "opset": conv.opset,
            "ir_version": conv.ir_version,
            "sha256": conv.sha256,
            "max_abs_diff_vs_predict_proba": conv.max_abs_diff,
            "max_abs_diff_vs_skl2onnx": conv.max_abs_diff_skl2onnx,
        },
        "warnings": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "sklearn_version": sklearn_version,
    }


def load_meta_estimator(stack_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(fitted estimator, meta.json) from a stack directory, without unpickling anything."""
    meta = read_meta_json(stack_dir)
    return load_estimator(
        meta["estimator"], Path(stack_dir) / str(meta["estimator"].get("file", META_NPZ))
    ), meta


def describe(res: MetaResult) -> str:
    """What `cxr stack` prints: the fit, its cross-validated metrics, calibration and operating points."""
    cv = res.cv_metrics
    macro = "undefined" if cv["macro_f1"] is None else format(cv["macro_f1"], ".1%")
    info = read_meta_json(res.stack_dir)
    lines = [
        f"meta-learner {res.estimator} {json.dumps(res.params)} on {res.n_train} {info['source']} images",
        f"  members (feature order): {', '.join(res.members)}",
        f"  cross-validated: log loss {cv['log_loss']:.4f}, accuracy {cv['accuracy']:.1%}, macro-F1 {macro}",
        f"  ONNX: {res.onnx_path} (max |p - predict_proba| = {res.onnx_max_abs_diff:.2g})",
    ]
    cal = info.get("calibration") or {}
    if cal.get("method") == "temperature":
        lines.append(
            f"  calibration: temperature {cal['temperature']:.3f} (validation NLL {cal['nll_before']:.4f} -> "
            f"{cal['nll_after']:.4f}, fitted on the same cross-validated predictions)"
        )
    for name, op in (info.get("operating_points") or {}).items():
        spec = "n/a" if op["val_specificity"] is None else format(op["val_specificity"], ".1%")
        lines.append(
            f"  operating point {name}: p >= {op['threshold']:.4f} for sensitivity {op['target_sensitivity']:.0%} "
            f"(validation: {op['val_sensitivity']:.1%}, specificity {spec})"
        )
    lines.append(f"  wrote {res.meta_json} and {res.estimator_path}")
    return "\n".join(lines)
