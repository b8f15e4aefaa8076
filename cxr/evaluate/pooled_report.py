"""The pooled cross-validation comparison as Markdown and JSON (``report.md``, ``report.json``).

Takes: the pooled methods, McNemar tests, per-fold facts and warnings of ``cxr.evaluate.pooled``. Makes: the
two files in the output folder and the plain-text table the CLI prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.evaluate.report import fmt, fmt_ci
from cxr.evaluate.stats import McNemarResult
from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.evaluate.pooled_types import PoolConfig, PooledMethod, PooledResult

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
    head = [
        "method",
        f"accuracy [{confidence:.0%} CI]",
        f"macro-F1 [{confidence:.0%} CI]",
        "accuracy per fold",
    ]
    rows = [head, *_rows(methods)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


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


def write_pooled_report(
    cfg: PoolConfig,
    methods: Sequence[PooledMethod],
    tests: Mapping[str, McNemarResult],
    member_tests: Mapping[str, McNemarResult],
    folds: Sequence[Mapping[str, Any]],
    warnings: Sequence[str],
    version: str,
    created: datetime,
) -> tuple[Path, Path]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = methods[0].n if methods else 0
    md = [
        f"# {TITLE}",
        "",
        f"> {NOTICE}",
        "",
        f"{len(folds)} folds, {n} test images in all; each image is predicted by the ensemble of the fold that "
        "held it out (its members, meta-learner and baselines never trained on it). Intervals: paired "
        f"percentile bootstrap over the pooled images, {cfg.n_bootstrap} resamples. McNemar's test on the "
        "pooled images (exact binomial below "
        f"{cfg.exact_below} discordant pairs), significance level {cfg.alpha}.",
        "",
        "| method | accuracy | macro-F1 | accuracy per fold |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in _rows(methods)),
        "",
        "## Tests",
        "",
        *(f"- {mcnemar_line(t)}{' (significant)' if t.p_value < cfg.alpha else ''}" for t in tests.values()),
        "",
        *_member_lines(cfg, member_tests),
        "## Folds",
        "",
        "| run | fold | test images | best member (validation) |",
        "|---|---|---|---|",
        *(
            f"| `{f['run_dir']}` | {f['fold']} of {f['folds']} | {f['n']} | {f['best_member']} |"
            for f in folds
        ),
    ]
    if warnings:
        md += ["", "## Warnings", "", *(f"- {w}" for w in warnings)]
    report = {
        "notice": NOTICE,
        "n": n,
        "folds": list(folds),
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
            for m in methods
        },
        "tests": {k: t.to_dict() for k, t in tests.items()},
        "member_tests_descriptive": {k: t.to_dict() for k, t in member_tests.items()},
        "config": {
            "n_bootstrap": cfg.n_bootstrap,
            "confidence": cfg.confidence,
            "alpha": cfg.alpha,
            "exact_below": cfg.exact_below,
            "seed": cfg.seed,
        },
        "warnings": list(warnings),
        "created": created.isoformat(timespec="seconds"),
        "cxr_version": version,
    }
    md_path, js_path = out / "report.md", out / "report.json"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    js_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return md_path, js_path


def describe_pooled(res: PooledResult) -> str:
    """What `cxr evaluate-folds` prints: the pooled table and the McNemar tests."""
    lines = [f"{len(res.folds)} folds, {res.n} test images pooled", format_pooled_table(res.methods), ""]
    lines += [mcnemar_line(t) for t in res.tests.values()]
    if res.member_tests:
        lines.append("each member alone vs the baseline (descriptive, no multiplicity correction):")
        lines += [f"  {mcnemar_line(t)}" for t in res.member_tests.values()]
    return "\n".join(lines)
