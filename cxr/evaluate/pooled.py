"""`cxr evaluate-folds`: the test splits of K cross-validation folds pooled into one comparison.

Takes: the run directories of the folds of one `cxr data split --folds K` (each evaluated by `cxr evaluate`:
``eval/predictions_test.csv``, ``eval/report.json``, ``manifest.json``) (``PoolConfig``). Makes:
``OUT/report.md`` and ``report.json`` -> ``PooledResult``: every method's accuracy and macro-F1 on all pooled
test images (each predicted by the fold's ensemble that never trained on it) with paired bootstrap intervals,
per fold as well, and McNemar's test of stacking against the best member (each fold's own, chosen on its
validation split), soft voting and every baseline on the pooled images. The folds' test splits must be
disjoint and come from one data set; a fold that is missing is named in the warnings.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__
from cxr.errors import DataError
from cxr.evaluate.method_predictions import MethodPredictions, read_table, table_path
from cxr.evaluate.pooled_report import write_pooled_report
from cxr.evaluate.pooled_types import BEST, PoolConfig, PooledMethod, PooledResult
from cxr.evaluate.stats import Interval, McNemarResult, bootstrap_intervals, mcnemar
from cxr.evaluate.types import SOFT, STACKING
from cxr.labels import CLASSES, NOTICE
from cxr.metrics import macro_f1_from_labels


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read {what} {path}: {e}", hint="run the fold's stages first", path=path
        ) from e


def _load_fold(run_dir: Path) -> tuple[MethodPredictions, dict[str, Any]]:
    report = _read_json(run_dir / "eval" / "report.json", "the evaluation report")
    manifest = _read_json(run_dir / "manifest.json", "the manifest details")
    classes = tuple(report.get("classes") or CLASSES)
    table = read_table(table_path(run_dir / "eval", "test"), classes)
    best = str(report["best_member"]["name"])
    if f"member:{best}" not in table.predictions:
        raise DataError(
            f"{run_dir}: the best member {best!r} has no column in its prediction table", path=run_dir
        )
    table.predictions[BEST] = table.predictions[f"member:{best}"]
    info = {
        "run_dir": str(run_dir),
        "fold": manifest.get("fold"),
        "folds": manifest.get("folds"),
        "root": manifest.get("root"),
        "seed": manifest.get("seed"),
        "n": len(table.paths),
        "best_member": best,
    }
    return table, info


def _check_folds(tables: list[MethodPredictions], infos: list[dict[str, Any]]) -> list[str]:
    """Refuse overlapping test splits or two data sets; warn about folds that are not all there."""
    seen: dict[str, str] = {}
    for t, info in zip(tables, infos, strict=True):
        for p in t.paths:
            if p in seen:
                raise DataError(
                    f"{p} is in the test split of both {seen[p]} and {info['run_dir']}",
                    hint="pool the folds of ONE `cxr data split --folds K` (same data, seed and K)",
                )
            seen[p] = info["run_dir"]
    for key in ("root", "seed", "folds"):
        values = {str(i[key]) for i in infos}
        if len(values) > 1:
            raise DataError(
                f"the runs differ in their split's {key}: {', '.join(sorted(values))}",
                hint="pool the folds of ONE `cxr data split --folds K` (same data, seed and K)",
            )
    k = infos[0]["folds"] or 0
    have = sorted(int(i["fold"]) for i in infos if i["fold"] is not None)
    missing = sorted(set(range(int(k))) - set(have)) if k else []
    warns = [f"folds {missing} of {k} are not pooled: not every image is tested"] if missing else []
    if not k:
        warns.append(
            "the runs' manifests record no folds (plain splits): their test splits are merely disjoint"
        )
    return warns


def _pooled_methods(
    cfg: PoolConfig, tables: list[MethodPredictions]
) -> tuple[tuple[PooledMethod, ...], dict]:
    keys = [k for k in tables[0].predictions if all(k in t.predictions for t in tables)]
    y = np.concatenate([t.labels for t in tables])
    preds = {k: np.concatenate([t.predictions[k] for t in tables]) for k in keys}
    k_classes = len(tables[0].classes)
    rng = np.random.default_rng(cfg.seed)
    none = {"accuracy": Interval(None, None), "macro_f1": Interval(None, None)}
    cis = (
        bootstrap_intervals(y, preds, k_classes, n_boot=cfg.n_bootstrap, level=cfg.confidence, rng=rng)
        if cfg.n_bootstrap
        else {k: none for k in keys}
    )
    methods = tuple(
        PooledMethod(
            key=k,
            n=int(y.size),
            accuracy=float(np.mean(preds[k] == y)),
            macro_f1=macro_f1_from_labels(y, preds[k], k_classes),
            accuracy_ci=cis[k]["accuracy"],
            macro_f1_ci=cis[k]["macro_f1"],
            per_fold_accuracy=tuple(float(np.mean(t.predictions[k] == t.labels)) for t in tables),
        )
        for k in keys
    )
    return methods, {k: preds[k] == y for k in keys}


def _tests(cfg: PoolConfig, correct: dict[str, np.ndarray]) -> dict[str, McNemarResult]:
    if STACKING not in correct:
        return {}
    others = [
        ("stacking_vs_best_member", BEST, "best member (per fold)"),
        ("stacking_vs_soft_vote", SOFT, "soft voting"),
    ]
    baselines = [k for k in correct if k.startswith("baseline:")]
    others += [
        (f"stacking_vs_{k.removeprefix('baseline:')}", k, k.removeprefix("baseline:")) for k in baselines
    ]
    return {
        name: mcnemar(correct[STACKING], correct[key], a="stacking", b=label, exact_below=cfg.exact_below)
        for name, key, label in others
        if key in correct
    }


def _member_tests(cfg: PoolConfig, correct: dict[str, np.ndarray]) -> dict[str, McNemarResult]:
    """Each member alone vs each baseline. Descriptive, not pre-specified: it tells whether the stack adds
    anything beyond its strongest member (no multiplicity correction; the report says so)."""
    tests = {}
    for m in (k for k in correct if k.startswith("member:")):
        for base in (k for k in correct if k.startswith("baseline:")):
            name_m, name_b = m.removeprefix("member:"), base.removeprefix("baseline:")
            tests[f"{name_m}_vs_{name_b}"] = mcnemar(
                correct[m], correct[base], a=name_m, b=name_b, exact_below=cfg.exact_below
            )
    return tests


def pool_folds(cfg: PoolConfig) -> PooledResult:
    """Pool the folds' test predictions and write the report (see the module docstring)."""
    loaded = [_load_fold(Path(r)) for r in cfg.run_dirs]
    tables, infos = [t for t, _ in loaded], [i for _, i in loaded]
    warnings = _check_folds(tables, infos)
    methods, correct = _pooled_methods(cfg, tables)
    tests, member_tests = _tests(cfg, correct), _member_tests(cfg, correct)
    md, js = write_pooled_report(
        cfg, methods, tests, member_tests, infos, warnings, __version__, datetime.now(timezone.utc)
    )
    return PooledResult(
        methods,
        tests,
        int(sum(len(t.paths) for t in tables)),
        tuple(infos),
        md,
        js,
        tuple(warnings),
        member_tests,
    )


__all__ = ["BEST", "NOTICE", "PoolConfig", "PooledMethod", "PooledResult", "pool_folds"]
