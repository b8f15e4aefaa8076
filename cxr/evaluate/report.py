"""The evaluation report: the comparison table for the terminal, ``report.md`` and ``report.json``.

Takes: an ``EvalResult``. Makes: the table text and the two files (``null`` in the
JSON where a value is undefined; calibration and operating points only where the meta-learner records them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

from cxr import __version__
from cxr.evaluate.calibration_check import UNCALIBRATED_NAME
from cxr.evaluate.selective import selective_markdown
from cxr.evaluate.stats import Interval, McNemarResult
from cxr.evaluate.types import EvalConfig, EvalResult, MethodResult
from cxr.labels import NOTICE
from cxr.markdown import table

UNDEFINED = "undefined"
CONFIG_KEYS = ("n_bootstrap", "confidence", "alpha", "exact_below", "ece_bins", "seed")  # in report.json


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return UNDEFINED
    return f"{x:.1%}" if pct else f"{x:.3f}"


def fmt_ci(value: float | None, ci: Interval, pct: bool = True) -> str:
    if value is None:
        return UNDEFINED
    if ci.low is None or ci.high is None:
        return fmt(value, pct)
    return f"{fmt(value, pct)} [{fmt(ci.low, pct)}, {fmt(ci.high, pct)}]"


def summary_rows(methods: Sequence[MethodResult]) -> list[tuple[str, str, str, str, str]]:
    """Per method: name, accuracy [CI], macro-F1 [CI], macro ROC-AUC, ECE (the text and Markdown tables)."""
    return [
        (
            m.name,
            fmt_ci(m.metrics.accuracy, m.accuracy_ci),
            fmt_ci(m.metrics.macro_f1, m.macro_f1_ci),
            fmt(m.metrics.macro_roc_auc),
            fmt(m.metrics.ece),
        )
        for m in methods
    ]


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: columns padded to their widest cell, a rule under the head."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [head, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def ci_head(confidence: float) -> tuple[str, str, str]:
    """The first columns of every comparison table: method, accuracy and macro-F1 with their intervals."""
    return ("method", f"accuracy [{confidence:.0%} CI]", f"macro-F1 [{confidence:.0%} CI]")


def format_table(methods: Sequence[MethodResult], confidence: float = 0.95) -> str:
    """Plain-text comparison table (what the CLI and the demo print)."""
    return text_table((*ci_head(confidence), "macro ROC-AUC", "ECE"), summary_rows(methods))


def _test_line(t: McNemarResult) -> str:
    stat = "" if t.statistic is None else f", chi2 = {t.statistic:.3f}"
    return (
        f"- {t.a} vs {t.b}: {t.a} alone right on {t.a_only}, {t.b} alone right on {t.b_only} "
        f"({t.discordant} discordant; {t.method}{stat}); p = {t.p_value:.4g}"
    )


def _md_head(cfg: EvalConfig, f: EvalResult) -> list[str]:
    """The verdict first, then what was compared on which images, and the classes nothing says about."""
    meta = f.meta_json
    lines = [
        "# Does stacking beat the best single model?",
        "",
        f"> {NOTICE}",
        "",
        f"**{f.verdict}**",
        "",
        f"Split: `{cfg.split}`, {f.n} images. Best single member: **{f.best_member}** ({f.best_member_rule}). "
        f"Meta-learner: {meta.get('type')} {json.dumps(meta.get('params'))}, trained on "
        f"{meta.get('n_train')} {meta.get('source')} predictions.",
        "",
        "The validation split serves three purposes here: each member's early stopping (its best epoch), the "
        "meta-learner's training set, and the choice of the best single member. All three therefore fit the "
        "validation images a little; only the test split, used for nothing else, measures the methods.",
        "",
    ]
    if f.undefined_classes:
        undefined = f.undefined_classes
        lines += [
            f"**Undefined:** {', '.join(undefined)} {'has' if len(undefined) == 1 else 'have'} no {cfg.split} images, so "
            "its recall, F1 and ROC-AUC are undefined (shown as 'undefined', excluded from macro averages; "
            "weighted averages give it weight 0). Nothing here says how well any method finds it.",
            "",
        ]
    return lines


def _md_comparison(cfg: EvalConfig, f: EvalResult) -> list[str]:
    """The comparison table with its intervals, and the significance tests."""
    head = (*ci_head(cfg.confidence), "macro ROC-AUC", "ECE")
    lines = ["## Comparison", "", *table(head, summary_rows(f.methods))]
    return lines + [
        "",
        f"Intervals: percentile bootstrap, {cfg.n_bootstrap} paired resamples, seed {cfg.seed}. ECE: {cfg.ece_bins} "
        "equal-width bins of the predicted class's probability (majority voting: its vote share).",
        "",
        "## Significance (McNemar)",
        "",
        *(_test_line(t) for t in f.tests.values()),
        "",
    ]


def _md_calibration(f: EvalResult) -> list[str]:
    """ECE and NLL of stacking before and after its temperature (validation: the metadata's; the split's)."""
    c = f.calibration
    if c is None:
        return []
    if c.temperature == 1.0:
        said = (
            f"No temperature is applied (method: {c.method}, T = 1): the stacked output is the meta-learner's "
            "own, so before and after are the same."
        )
    else:
        said = (
            f"Stacking's probabilities are temperature-scaled, p = softmax(log p_raw / T) with T = {c.temperature:.4g}, "
            f"fitted on {c.val_n if c.val_n is not None else 'the'} {c.fitted_on or 'validation predictions'}. "
            "The argmax, so every label and accuracy, is unchanged. The stacking row above is the calibrated "
            f"output (what ships); '{UNCALIBRATED_NAME}' is the same meta-learner without T, shown for its ECE "
            "and reliability diagram only (not tested, not in the verdict)."
        )
    rows = [
        (
            f"validation (n={c.val_n}; T fitted on it, so in-sample)",
            fmt(c.val_ece_before),
            fmt(c.val_ece_after),
            fmt(c.val_nll_before),
            fmt(c.val_nll_after),
        ),
        (f"{c.split} (n={c.n})", fmt(c.ece_before), fmt(c.ece_after), fmt(c.nll_before), fmt(c.nll_after)),
    ]
    return [
        "## Calibration",
        "",
        said,
        "",
        *table(("split", "ECE before", "ECE after", "NLL before", "NLL after"), rows),
        "",
        f"ECE on {c.split}: {c.ece_bins} bins of the predicted class's probability; NLL: mean -log p(true class).",
        "",
    ]


def _md_operating_points(cfg: EvalConfig, f: EvalResult) -> list[str]:
    """Each recorded threshold: chosen on validation for a target sensitivity, measured on the split."""
    if f.operating_points is None:
        return []
    lines = ["## Operating points", ""]
    if not f.operating_points:
        return lines + ["The meta-learner records no operating points.", ""]
    level = f"{cfg.confidence:.0%}"
    lines += [
        "Each class's threshold on its calibrated stacking probability, chosen on validation as the highest "
        "that reaches the target sensitivity there; a result is above the operating point when "
        f"p(class) >= threshold. Measured on `{cfg.split}` with {level} Wilson score intervals.",
        "",
    ]
    rows = []
    for op in f.operating_points:
        measured: tuple[str, ...]
        if op.skipped:
            measured = (f"not measured ({op.skipped})", UNDEFINED, f"{op.tp} / {op.fn} / {op.tn} / {op.fp}")
        else:
            measured = (
                f"{fmt_ci(op.sensitivity, op.sensitivity_ci)} ({op.tp}/{op.tp + op.fn})",
                f"{fmt_ci(op.specificity, op.specificity_ci)} ({op.tn}/{op.tn + op.fp})",
                f"{op.tp} / {op.fn} / {op.tn} / {op.fp}",
            )
        rows.append(
            (
                op.name,
                f"{op.threshold:.4g}",
                fmt(op.target_sensitivity, pct=True),
                f"{fmt(op.val_sensitivity, pct=True)} / {fmt(op.val_specificity, pct=True)}",
                *measured,
            )
        )
    head = (
        "class",
        "threshold",
        "target sensitivity",
        "validation sensitivity / specificity",
        f"{cfg.split} sensitivity [{level} CI]",
        f"{cfg.split} specificity [{level} CI]",
        "TP / FN / TN / FP",
    )
    return lines + table(head, rows) + [""]


def _md_details(f: EvalResult) -> list[str]:
    """Every average, then precision / recall / F1 / ROC-AUC per class."""
    methods = f.methods
    lines = ["## All averages", ""]
    lines += table(
        ("method", "macro P", "macro R", "macro F1", "weighted P", "weighted R", "weighted F1"),
        [
            (
                m.name,
                fmt(m.metrics.macro_precision),
                fmt(m.metrics.macro_recall),
                fmt(m.metrics.macro_f1),
                fmt(m.metrics.weighted_precision),
                fmt(m.metrics.weighted_recall),
                fmt(m.metrics.weighted_f1),
            )
            for m in methods
        ],
    )
    lines += ["", "## Per class (precision / recall / F1 / ROC-AUC)", ""]
    return lines + table(
        ("method", *(f"{c} (n={methods[0].metrics.per_class[i].support})" for i, c in enumerate(f.classes))),
        [
            (
                m.name,
                *(
                    f"{fmt(pc.precision)} / {fmt(pc.recall)} / {fmt(pc.f1)} / {fmt(pc.roc_auc)}"
                    for pc in m.metrics.per_class
                ),
            )
            for m in methods
        ],
    )


def markdown(cfg: EvalConfig, f: EvalResult) -> str:
    """``report.md``: the verdict, the comparison, the tests, every average and per-class result."""
    lines = _md_head(cfg, f) + _md_comparison(cfg, f) + _md_calibration(f)
    lines += _md_operating_points(cfg, f)
    lines += [] if f.selective is None else selective_markdown(f.selective, cfg.split)
    lines += _md_details(f)
    if f.figures:
        lines += ["", "## Figures", ""] + [f"- [{p.name}]({p.name})" for p in f.figures]
    if f.warnings:
        lines += ["", "## Notes", ""] + [f"- {w}" for w in f.warnings]
    return "\n".join(lines) + "\n"


def report_json(cfg: EvalConfig, f: EvalResult) -> dict[str, Any]:
    """``report.json``: every number (``null`` where undefined), the config and the verdict."""
    return {
        "notice": NOTICE,
        "question": "does stacking beat the best single model?",
        "stacking_helps": f.stacking_helps,
        "verdict": f.verdict,
        "split": cfg.split,
        "n": f.n,
        "classes": list(f.classes),
        "undefined_classes": list(f.undefined_classes),
        "members": list(f.members),
        "manifest_digest": f.manifest_digest,
        "best_member": {"name": f.best_member, "rule": f.best_member_rule},
        "meta_learner": {
            k: f.meta_json.get(k) for k in ("type", "params", "cv_score", "source", "n_train", "val_metrics")
        },
        "methods": {m.key: m.to_dict() for m in f.methods},
        "tests": {k: t.to_dict() for k, t in f.tests.items()},
        **({} if f.calibration is None else {"calibration": asdict(f.calibration)}),
        **({} if f.selective is None else {"selective": f.selective.to_dict()}),
        **(
            {}
            if f.operating_points is None
            else {"operating_points": {op.name: op.to_dict() for op in f.operating_points}}
        ),
        "config": {k: getattr(cfg, k) for k in CONFIG_KEYS},
        "figures": [p.name for p in f.figures],
        "warnings": list(f.warnings),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
    }


def write_reports(cfg: EvalConfig, f: EvalResult) -> EvalResult:
    """Write ``f.report_md``, ``f.report_json`` and (with ``cfg.plots``) the figures; ``f`` with the figures."""
    cfg.eval_dir.mkdir(parents=True, exist_ok=True)
    if cfg.plots:
        from cxr.evaluate.plots import write_figures  # matplotlib only when figures are asked for

        f = replace(f, figures=write_figures(f.methods, f.classes, cfg.eval_dir, cfg.ece_bins))
    f.report_md.write_text(markdown(cfg, f), encoding="utf-8")
    f.report_json.write_text(json.dumps(report_json(cfg, f), indent=2), encoding="utf-8")
    return f
