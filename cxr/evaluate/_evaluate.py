"""`cxr evaluate`: does stacking beat the best single model? Every method on one split, reported.

Takes: a run directory with member predictions and ``stack/`` (``EvalConfig``). Makes: ``eval/report.md``,
``report.json``, ``predictions_<split>.csv`` and the figures -> ``EvalResult``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxr.calibration import uncalibrate
from cxr.data.manifest import load_manifest
from cxr.evaluate.calibration_check import (
    UNCALIBRATED_NAME,
    CalibrationSummary,
    OperatingPointResult,
    calibration_summary,
    operating_points,
    temperature_of,
)
from cxr.evaluate.methods import (
    Stacked,
    choose_best_member,
    load_baselines,
    majority_vote,
    run_stacking,
    soft_vote,
    stacking_tests,
    table_path,
    write_table,
)
from cxr.evaluate.report import format_table, write_reports
from cxr.evaluate.selective import SelectiveReport, selective_report
from cxr.evaluate.stats import McNemarResult, bootstrap_intervals
from cxr.evaluate.types import (
    MAJORITY,
    REFERENCE,
    SOFT,
    STACKING,
    UNCALIBRATED,
    EvalConfig,
    EvalResult,
    MethodResult,
)
from cxr.metrics import classification_metrics
from cxr.stack.features import MetaData, load_split, read_meta_json

log = logging.getLogger(__name__)

Entry = tuple[str, str, str, np.ndarray, "np.ndarray | None"]  # key, name, kind, scores [N, K], labels


def _entries(
    cfg: EvalConfig, data: MetaData, meta_json: dict, stacked: Stacked, warnings: list[str]
) -> list[Entry]:
    """Every method's scores: each member, soft and majority voting, stacking (and, with a temperature,
    stacking before it: same labels, its own ECE), then the baselines."""
    maj_labels, maj_scores = majority_vote(data.member_probs)
    entries: list[Entry] = [
        (f"member:{name}", name, "member", data.member_probs[:, j], None)
        for j, name in enumerate(data.members)
    ]
    entries += [
        (SOFT, "soft voting", SOFT, soft_vote(data.member_probs), None),
        (MAJORITY, "majority voting", MAJORITY, maj_scores, maj_labels),
        (STACKING, f"stacking ({meta_json.get('type')})", STACKING, stacked.probs, stacked.labels),
    ]
    t = temperature_of(stacked.info)
    if t is not None and t != 1.0:
        entries.append(
            (UNCALIBRATED, UNCALIBRATED_NAME, REFERENCE, uncalibrate(stacked.probs, t), stacked.labels)
        )
    baselines, notes = load_baselines(Path(cfg.run_dir), cfg.split, data)
    warnings += notes
    return entries + [(f"baseline:{n}", f"{n} (baseline)", "baseline", p, None) for n, p in baselines.items()]


def _methods(cfg: EvalConfig, data: MetaData, entries: list[Entry]) -> tuple[MethodResult, ...]:
    """Metrics and paired bootstrap intervals of every method on the same images."""
    y, k = data.labels, len(data.classes)
    preds = {key: (np.argmax(p, axis=1) if lab is None else lab) for key, _, _, p, lab in entries}
    rng = np.random.default_rng(cfg.seed)
    cis = bootstrap_intervals(y, preds, k, n_boot=cfg.n_bootstrap, level=cfg.confidence, rng=rng)
    return tuple(
        MethodResult(
            key=key,
            name=name,
            kind=kind,
            metrics=classification_metrics(y, p, data.classes, y_pred=preds[key], ece_bins=cfg.ece_bins),
            accuracy_ci=cis[key]["accuracy"],
            macro_f1_ci=cis[key]["macro_f1"],
            predictions=preds[key],
            confidence=np.asarray(p, dtype=np.float64)[np.arange(y.size), preds[key]],
            correct=preds[key] == y,
        )
        for key, name, kind, p, _ in entries
    )


def _calibration(
    cfg: EvalConfig, data: MetaData, stacked: Stacked, methods: tuple[MethodResult, ...], warnings: list[str]
) -> tuple[CalibrationSummary | None, tuple[OperatingPointResult, ...] | None]:
    """The temperature's before/after figures and the operating points on the split (None: not recorded)."""
    ece = {m.key: m.metrics.ece for m in methods}
    after = ece[STACKING]
    summary = calibration_summary(
        stacked.info,
        cfg.split,
        data.labels,
        stacked.probs,
        (ece.get(UNCALIBRATED, after), after),
        cfg.ece_bins,
    )
    points, notes = operating_points(
        stacked.info, data.classes, cfg.split, data.labels, stacked.probs, cfg.confidence
    )
    warnings += notes
    return summary, points


def _pp(d: float) -> str:
    return f"{abs(d) * 100:.1f} percentage points"


def verdict(
    result_by_key: dict[str, MethodResult], best: str, tests: dict[str, McNemarResult], alpha: float
) -> tuple[bool, str]:
    """(stacking helps, plain-language verdict). Helps = more accurate than the best member and p < alpha."""
    st = result_by_key[STACKING].metrics
    bm = result_by_key[f"member:{best}"].metrics
    sv = result_by_key[SOFT].metrics
    t_best, t_soft = tests["stacking_vs_best_member"], tests["stacking_vs_soft_vote"]
    d_best = st.accuracy - bm.accuracy
    helps = d_best > 0 and t_best.p_value < alpha
    accs = f"{st.accuracy:.1%} vs {bm.accuracy:.1%}; McNemar p = {t_best.p_value:.3g}"
    if helps:
        first = (
            f"Stacking helps: it is {_pp(d_best)} more accurate than the best single member, {best} ({accs})."
        )
    elif d_best > 0:
        first = (
            f"Stacking does not significantly help: it is {_pp(d_best)} more accurate than the best single member, "
            f"{best} ({accs} >= {alpha:g}), a difference within chance."
        )
    elif d_best == 0:
        first = (
            f"Stacking does not help: it is exactly as accurate as the best single member, {best} ({accs})."
        )
    else:
        first = f"Stacking does not help: it is {_pp(d_best)} less accurate than the best single member, {best} ({accs})."
    d_soft = st.accuracy - sv.accuracy
    p_soft = f"McNemar p = {t_soft.p_value:.3g}"
    sig = "" if t_soft.p_value < alpha else ", not significant"
    if d_soft > 0:
        second = f"Against soft voting it is {_pp(d_soft)} better ({p_soft}{sig})."
    elif d_soft == 0:
        second = f"Soft voting, which needs no training, is exactly as accurate ({p_soft})."
    else:
        second = f"Soft voting, which needs no training, is {_pp(d_soft)} more accurate ({p_soft}{sig})."
    return helps, f"{first} {second}"


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Evaluate every method on ``cfg.split`` and write the report (see the module docstring)."""
    run_dir = Path(cfg.run_dir)
    meta_json = read_meta_json(cfg.meta_dir)
    members = tuple(meta_json["member_order"])
    manifest = load_manifest(run_dir / "manifest.csv", check_files=False)
    data = load_split(run_dir, members, cfg.split, manifest=manifest)
    warnings: list[str] = []
    stacked = run_stacking(cfg.meta_dir / str(meta_json.get("onnx", {}).get("file", "meta.onnx")), data)
    methods = _methods(cfg, data, _entries(cfg, data, meta_json, stacked, warnings))
    calibration, points = _calibration(cfg, data, stacked, methods, warnings)
    best, rule, notes = choose_best_member(run_dir, members, data)
    warnings += notes
    by_key = {m.key: m for m in methods}
    tests = stacking_tests({m.key: m.correct for m in methods}, f"member:{best}", best, cfg.exact_below)
    helps, said = verdict(by_key, best, tests, cfg.alpha)
    undefined = methods[0].metrics.undefined_classes
    warnings += [
        f"class '{c}' has no {cfg.split} images: its recall, F1 and ROC-AUC are undefined and left out of "
        "the macro averages"
        for c in undefined
    ]
    fused = cfg.fused_model if cfg.fused_model is not None else run_dir / "ensemble.onnx"
    rows = {r.path: r for r in manifest.rows}
    selective = selective_report(
        by_key[STACKING].correct, by_key[STACKING].confidence, fused,
        [manifest.abspath(rows[p]) for p in data.paths], cfg.confidence,
    )  # fmt: skip
    out = cfg.eval_dir
    result = EvalResult(
        methods=methods,
        best_member=best,
        best_member_rule=rule,
        tests=tests,
        stacking_helps=helps,
        verdict=said,
        table=format_table(methods, cfg.confidence),
        classes=data.classes,
        undefined_classes=undefined,
        n=int(data.labels.size),
        report_md=out / "report.md",
        report_json=out / "report.json",
        figures=(),
        warnings=tuple(warnings),
        calibration=calibration,
        operating_points=points,
        members=data.members,
        manifest_digest=data.manifest_digest,
        meta_json=meta_json,
        selective=selective,
    )
    result = write_reports(cfg, result)
    predictions = {m.key: m.predictions for m in methods}
    write_table(table_path(out, cfg.split), data.paths, data.labels, predictions, data.classes)
    for w in warnings:
        log.warning("%s", w)
    return result


def describe(res: EvalResult) -> str:
    """What `cxr evaluate` prints: the split, the comparison table and the verdict."""
    return "\n".join(
        [
            f"test split: {res.n} images; best single member (validation): {res.best_member}",
            res.table,
            "",
            res.verdict,
            *([] if res.selective is None else [_gate_line(res.selective)]),
        ]
    )


def _gate_line(s: SelectiveReport) -> str:
    if s.gate is None:
        return f"input gate: {s.note}"
    g, every = s.gate, s.curve[0]
    return (
        f"input gate: keeps {g.kept} of {g.n} ({g.coverage:.1%}); accuracy on those {g.accuracy:.1%} vs "
        f"{every.accuracy:.1%} on all (risk-coverage curve in the report)"
    )
