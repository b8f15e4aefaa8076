"""`cxr evaluate-folds`: the test splits of K cross-validation folds pooled into one comparison.

Takes: the run directories of one `cxr data split --folds K`, each evaluated (``PoolConfig``). Makes:
``OUT/report.md`` and ``report.json`` -> ``PooledResult``: every method on all pooled test images with
paired bootstrap intervals, per fold too, and McNemar's tests of stacking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__
from cxr.errors import ConfigError, DataError
from cxr.evaluate.methods import MethodPredictions, read_table, stacking_tests, table_path
from cxr.evaluate.report import ci_head, fmt, fmt_ci, text_table
from cxr.evaluate.stats import Interval, McNemarResult, bootstrap_intervals, mcnemar
from cxr.labels import CLASSES, NOTICE
from cxr.markdown import table
from cxr.metrics import macro_f1_from_labels

BEST = "best_member"  # each fold's best member (validation), pooled


@dataclass(frozen=True)
class PoolConfig:
    run_dirs: tuple[Path, ...]
    out_dir: Path
    n_bootstrap: int = 2000
    confidence: float = 0.95
    alpha: float = 0.05
    exact_below: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.run_dirs) < 2:
            raise ConfigError(
                f"pooling needs the run directories of at least 2 folds, got {len(self.run_dirs)}",
                hint="pass every fold's run directory, e.g. runs/folds/fold0 ... runs/folds/fold4",
            )
        if self.n_bootstrap < 0 or not 0 < self.confidence < 1 or not 0 < self.alpha < 1:
            raise ConfigError(
                f"n_bootstrap {self.n_bootstrap} must be >= 0, confidence {self.confidence} and alpha "
                f"{self.alpha} in (0, 1)"
            )


@dataclass(frozen=True)
class PooledMethod:
    key: str
    n: int
    accuracy: float
    macro_f1: float | None
    accuracy_ci: Interval
    macro_f1_ci: Interval
    per_fold_accuracy: tuple[float, ...]


@dataclass(frozen=True)
class PooledResult:
    methods: tuple[PooledMethod, ...]
    tests: dict[str, McNemarResult]
    n: int
    folds: tuple[dict[str, Any], ...]  # per run: run_dir, fold, folds, n, best member
    report_md: Path
    report_json: Path
    warnings: tuple[str, ...] = ()
    # each member alone vs each baseline: descriptive, not pre-specified, no multiplicity correction
    member_tests: dict[str, McNemarResult] = field(default_factory=dict)

    def method(self, key: str) -> PooledMethod:
        return next(m for m in self.methods if m.key == key)


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
    split = {k: manifest.get(k) for k in ("fold", "folds", "root", "seed")}
    return table, {"run_dir": str(run_dir), **split, "n": len(table.paths), "best_member": best}


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
    cis = bootstrap_intervals(y, preds, k_classes, n_boot=cfg.n_bootstrap, level=cfg.confidence, rng=rng)
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
    tests = stacking_tests(correct, BEST, "best member (per fold)", cfg.exact_below)
    n = int(sum(len(t.paths) for t in tables))
    out = Path(cfg.out_dir)
    member_tests = _member_tests(cfg, correct)
    result = PooledResult(
        methods, tests, n, tuple(infos), out / "report.md", out / "report.json", tuple(warnings), member_tests
    )
    write_pooled_report(cfg, result)
    return result


TITLE = "Cross-validated comparison: every fold's test split pooled"


def method_name(key: str) -> str:
    """A readable name for a method key (``member:x`` -> ``x``, ``baseline:x`` -> ``x (baseline)``)."""
    if key.startswith("member:"):
        return key.removeprefix("member:")
    if key.startswith("baseline:"):
        return f"{key.removeprefix('baseline:')} (baseline)"
    return {
        "soft_vote": "soft voting",
        "majority_vote": "majority voting",
        "best_member": "best member (per fold)",
        "stacking_uncalibrated": "stacking (before calibration)",
    }.get(key, key)


def _rows(methods: Sequence[PooledMethod]) -> list[list[str]]:
    return [
        [
            method_name(m.key),
            fmt_ci(m.accuracy, m.accuracy_ci),
            fmt_ci(m.macro_f1, m.macro_f1_ci),
            " / ".join(fmt(a, pct=True) for a in m.per_fold_accuracy),
        ]
        for m in methods
    ]


def format_pooled_table(methods: Sequence[PooledMethod], confidence: float = 0.95) -> str:
    """The plain-text table: method, accuracy [CI], macro-F1 [CI], accuracy per fold."""
    return text_table((*ci_head(confidence), "accuracy per fold"), _rows(methods))


def mcnemar_line(t: McNemarResult) -> str:
    return (
        f"{t.a} vs {t.b}: {t.a} alone right on {t.a_only}, {t.b} alone on {t.b_only}; {t.method}, "
        f"p = {t.p_value:.3g}"
    )


def _member_lines(cfg: PoolConfig, member_tests: Mapping[str, McNemarResult]) -> list[str]:
    if not member_tests:
        return []
    return [
        "Each member alone against the baseline (descriptive, not pre-specified: one test per member, no "
        "multiplicity correction; it shows whether the stack adds anything beyond its strongest member):",
        "",
        *(
            f"- {mcnemar_line(t)}{f' (p < {cfg.alpha})' if t.p_value < cfg.alpha else ''}"
            for t in member_tests.values()
        ),
        "",
    ]


def write_pooled_report(cfg: PoolConfig, res: PooledResult) -> None:
    """``res.report_md`` and ``res.report_json``."""
    res.report_md.parent.mkdir(parents=True, exist_ok=True)
    md = [
        f"# {TITLE}",
        "",
        f"> {NOTICE}",
        "",
        f"{len(res.folds)} folds, {res.n} test images in all; each image is predicted by the ensemble of the fold that "
        "held it out (its members, meta-learner and baselines never trained on it). Intervals: paired "
        f"percentile bootstrap over the pooled images, {cfg.n_bootstrap} resamples. McNemar's test on the "
        "pooled images (exact binomial below "
        f"{cfg.exact_below} discordant pairs), significance level {cfg.alpha}.",
        "",
        *table(("method", "accuracy", "macro-F1", "accuracy per fold"), _rows(res.methods)),
        "",
        "## Tests",
        "",
        *(
            f"- {mcnemar_line(t)}{' (significant)' if t.p_value < cfg.alpha else ''}"
            for t in res.tests.values()
        ),
        "",
        *_member_lines(cfg, res.member_tests),
        "## Folds",
        "",
        *table(
            ("run", "fold", "test images", "best member (validation)"),
            (
                [f"`{f['run_dir']}`", f"{f['fold']} of {f['folds']}", str(f["n"]), str(f["best_member"])]
                for f in res.folds
            ),
        ),
    ]
    if res.warnings:
        md += ["", "## Warnings", "", *(f"- {w}" for w in res.warnings)]
    report = {
        "notice": NOTICE,
        "n": res.n,
        "folds": list(res.folds),
        "methods": {
            m.key: {
                "name": method_name(m.key),
                "n": m.n,
                "accuracy": m.accuracy,
                "accuracy_ci": m.accuracy_ci.to_list(),
                "macro_f1": m.macro_f1,
                "macro_f1_ci": m.macro_f1_ci.to_list(),
                "per_fold_accuracy": list(m.per_fold_accuracy),
            }
            for m in res.methods
        },
        "tests": {k: t.to_dict() for k, t in res.tests.items()},
        "member_tests_descriptive": {k: t.to_dict() for k, t in res.member_tests.items()},
        "config": {k: getattr(cfg, k) for k in ("n_bootstrap", "confidence", "alpha", "exact_below", "seed")},
        "warnings": list(res.warnings),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
    }
    res.report_md.write_text("\n".join(md) + "\n", encoding="utf-8")
    res.report_json.write_text(json.dumps(report, indent=2), encoding="utf-8")


def describe_pooled(res: PooledResult) -> str:
    """What `cxr evaluate-folds` prints: the pooled table and the McNemar tests."""
    lines = [f"{len(res.folds)} folds, {res.n} test images pooled", format_pooled_table(res.methods), ""]
    lines += [mcnemar_line(t) for t in res.tests.values()]
    if res.member_tests:
        lines.append("each member alone vs the baseline (descriptive, no multiplicity correction):")
        lines += [f"  {mcnemar_line(t)}" for t in res.member_tests.values()]
    return "\n".join(lines)
