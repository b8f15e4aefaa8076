"""`cxr evaluate`: does stacking beat the best single model? Members, voting and stacking on the test split.

Takes: a run directory with ``manifest.csv``, ``members/<name>/predictions/{val,test}.csv`` and
``stack/meta.json`` + ``stack/meta.onnx`` (``EvalConfig``). Makes: ``RUN_DIR/eval/report.md``,
``report.json``, ``confusion_<method>.png`` and ``reliability_<method>.png`` -> ``EvalResult``.

Methods: each member, soft voting (mean probabilities), majority voting (ties to the higher mean
probability) and stacking (the converted meta-learner run by onnxruntime on the members' test
probabilities, the graph that ships). Metrics per method: accuracy, macro/weighted precision/recall/F1,
per-class precision/recall/F1, one-vs-rest ROC-AUC, ECE, confusion matrix; paired bootstrap 95% intervals
for accuracy and macro-F1; McNemar's test of stacking against the best single member (chosen on the
validation split, so the test split does not pick its own winner) and against soft voting. Baselines from
``RUN_DIR/baselines/<name>/`` (the frozen-feature linear probe of ``cxr train probe``) join the table, each
with a McNemar test against stacking.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.data.manifest import load_manifest
from cxr.errors import ConfigError, DataError, ModelError
from cxr.evaluate.stats import Interval, McNemarResult, bootstrap_intervals, mcnemar
from cxr.evaluate.voting import majority_vote, soft_vote
from cxr.metrics import Metrics, classification_metrics
from cxr.session import cpu_session
from cxr.stack.features import META_PROP, MetaData, check_member_order, load_split, read_meta_json
from cxr.train.predictions import read_predictions

log = logging.getLogger(__name__)

SOFT, MAJORITY, STACKING = "soft_vote", "majority_vote", "stacking"


@dataclass(frozen=True)
class EvalConfig:
    run_dir: Path
    out_dir: Path | None = None  # default RUN_DIR/eval
    stack_dir: Path | None = None  # default RUN_DIR/stack
    split: str = "test"
    n_bootstrap: int = 2000
    confidence: float = 0.95
    alpha: float = 0.05  # significance level of McNemar's test for "stacking helps"
    exact_below: int = 25  # McNemar: exact binomial test below this many discordant pairs
    ece_bins: int = 15
    seed: int = 0
    plots: bool = True

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise ConfigError(
                f"split {self.split!r} cannot be evaluated", hint="use 'test' (or 'val' for a look)"
            )
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be 0 or more, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1 or not 0 < self.alpha < 1:
            raise ConfigError(f"confidence {self.confidence} and alpha {self.alpha} must lie in (0, 1)")
        if self.ece_bins < 1:
            raise ConfigError(f"ece_bins must be at least 1, got {self.ece_bins}")

    @property
    def eval_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(self.run_dir) / "eval"

    @property
    def meta_dir(self) -> Path:
        return Path(self.stack_dir) if self.stack_dir is not None else Path(self.run_dir) / "stack"


@dataclass(frozen=True)
class MethodResult:
    key: str  # "member:<name>", "soft_vote", "majority_vote", "stacking"
    name: str
    kind: str  # "member" | "soft_vote" | "majority_vote" | "stacking"
    metrics: Metrics
    accuracy_ci: Interval
    macro_f1_ci: Interval
    predictions: np.ndarray = field(repr=False)  # int64 [N]
    confidence: np.ndarray = field(repr=False)  # [N] probability (vote share) of the predicted class
    correct: np.ndarray = field(repr=False)  # bool [N]

    @property
    def slug(self) -> str:
        return self.key.replace("member:", "member_")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            **self.metrics.to_dict(),
            "accuracy_ci": self.accuracy_ci.to_list(),
            "macro_f1_ci": self.macro_f1_ci.to_list(),
        }


@dataclass(frozen=True)
class EvalResult:
    methods: tuple[MethodResult, ...]
    best_member: str
    best_member_rule: str
    tests: dict[str, McNemarResult]
    stacking_helps: bool
    verdict: str
    table: str
    classes: tuple[str, ...]
    undefined_classes: tuple[str, ...]
    n: int
    report_md: Path
    report_json: Path
    figures: tuple[Path, ...]
    warnings: tuple[str, ...] = ()

    def method(self, key: str) -> MethodResult:
        for m in self.methods:
            if m.key == key:
                return m
        raise KeyError(key)


def stacking_probabilities(meta_onnx: Path, data: MetaData) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], labels [N]) of the converted meta-learner on ``data``'s features."""
    if not Path(meta_onnx).is_file():
        raise ModelError(
            f"{meta_onnx} does not exist",
            hint="train the meta-learner first (`cxr train stack RUN_DIR`)",
            path=meta_onnx,
        )
    sess = cpu_session(meta_onnx)
    props = sess.get_modelmeta().custom_metadata_map
    if META_PROP not in props:
        raise ModelError(
            f"{meta_onnx} is not a cxr meta-learner (no {META_PROP})", hint="re-run `cxr train stack`"
        )
    info = json.loads(props[META_PROP])
    check_member_order(tuple(info.get("member_order", ())), data.members, what=f"evaluating with {meta_onnx}")
    if tuple(info.get("classes", ())) != data.classes:
        raise DataError(
            f"{meta_onnx} was trained with class order {info.get('classes')}, the predictions have {list(data.classes)}",
            hint="re-run `cxr train stack`",
        )
    inp = sess.get_inputs()[0]
    feats = data.features.astype(np.float64 if inp.type == "tensor(double)" else np.float32)
    label, probs = sess.run(["label", "probabilities"], {inp.name: feats})
    return np.asarray(probs, dtype=np.float64), np.asarray(label, dtype=np.int64)


def choose_best_member(run_dir: Path, members: tuple[str, ...], test: MetaData) -> tuple[str, str, list[str]]:
    """The best single member by validation accuracy (then macro-F1, then member order)."""
    notes: list[str] = []
    try:
        val = load_split(run_dir, members, "val")
        source, labels, probs = "validation", val.labels, val.member_probs
    except DataError as e:
        notes.append(
            f"no usable validation predictions ({e.message}): the best member is chosen on the test split itself"
        )
        source, labels, probs = "test", test.labels, test.member_probs
    scores = []
    for j, name in enumerate(members):
        m = classification_metrics(labels, probs[:, j], test.classes)
        scores.append((m.accuracy, m.macro_f1 if m.macro_f1 is not None else -1.0, -j, name))
    best = max(scores)
    return best[3], f"highest {source} accuracy ({best[0]:.4f}), ties by macro-F1 then member order", notes


BASELINES = "baselines"


def load_baselines(run_dir: Path, split: str, data: MetaData) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reference methods outside the ensemble (e.g. ``cxr train probe``'s linear probe), in ``data``'s row order.

    Reads ``RUN_DIR/baselines/<name>/<split>.csv`` (prediction tables); one made on another manifest or
    other images is left out with a note.
    """
    found: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for path in sorted((Path(run_dir) / BASELINES).glob(f"*/{split}.csv")):
        table = read_predictions(path)
        if table.manifest_digest != data.manifest_digest or set(table.paths) != set(data.paths):
            notes.append(
                f"baseline {path.parent.name} left out: it was made on other images or another split"
            )
            continue
        row = {p: i for i, p in enumerate(table.paths)}
        found[path.parent.name] = table.probs[[row[p] for p in data.paths]]
    return found, notes


def _pp(d: float) -> str:
    return f"{abs(d) * 100:.1f} percentage points"


def _verdict(
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
    if d_soft > 0:
        second = f"Against soft voting it is {_pp(d_soft)} better ({p_soft}{'' if t_soft.p_value < alpha else ', not significant'})."
    elif d_soft == 0:
        second = f"Soft voting, which needs no training, is exactly as accurate ({p_soft})."
    else:
        second = (
            f"Soft voting, which needs no training, is {_pp(d_soft)} more accurate ({p_soft}"
            f"{'' if t_soft.p_value < alpha else ', not significant'})."
        )
    return helps, f"{first} {second}"


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Evaluate every method on ``cfg.split`` and write the report (see the module docstring)."""
    from cxr.evaluate.report import format_table, write_reports

    run_dir = Path(cfg.run_dir)
    meta_json = read_meta_json(cfg.meta_dir)
    members = tuple(meta_json["member_order"])
    manifest = load_manifest(run_dir / "manifest.csv", check_files=False)
    data = load_split(run_dir, members, cfg.split, manifest=manifest)
    classes = data.classes
    k = len(classes)
    y = data.labels
    warnings: list[str] = []
    stack_probs, stack_labels = stacking_probabilities(
        cfg.meta_dir / str(meta_json.get("onnx", {}).get("file", "meta.onnx")), data
    )
    soft = soft_vote(data.member_probs)
    maj_labels, maj_scores = majority_vote(data.member_probs)
    entries: list[tuple[str, str, str, np.ndarray, np.ndarray | None]] = [
        (f"member:{name}", name, "member", data.member_probs[:, j], None) for j, name in enumerate(members)
    ]
    entries += [
        (SOFT, "soft voting", SOFT, soft, None),
        (MAJORITY, "majority voting", MAJORITY, maj_scores, maj_labels),
        (STACKING, f"stacking ({meta_json.get('type')})", STACKING, stack_probs, stack_labels),
    ]
    baselines, notes = load_baselines(run_dir, cfg.split, data)
    warnings += notes
    entries += [
        (f"baseline:{name}", f"{name} (baseline)", "baseline", p, None) for name, p in baselines.items()
    ]
    preds = {key: (np.argmax(p, axis=1) if lab is None else lab) for key, _, _, p, lab in entries}
    rng = np.random.default_rng(cfg.seed)
    cis = (
        bootstrap_intervals(y, preds, k, n_boot=cfg.n_bootstrap, level=cfg.confidence, rng=rng)
        if cfg.n_bootstrap > 0
        else {key: {"accuracy": Interval(None, None), "macro_f1": Interval(None, None)} for key in preds}
    )
    methods = tuple(
        MethodResult(
            key=key,
            name=name,
            kind=kind,
            metrics=classification_metrics(y, p, classes, y_pred=preds[key], ece_bins=cfg.ece_bins),
            accuracy_ci=cis[key]["accuracy"],
            macro_f1_ci=cis[key]["macro_f1"],
            predictions=preds[key],
            confidence=np.asarray(p, dtype=np.float64)[np.arange(y.size), preds[key]],
            correct=preds[key] == y,
        )
        for key, name, kind, p, _ in entries
    )
    by_key = {m.key: m for m in methods}
    best, rule, notes = choose_best_member(run_dir, members, data)
    warnings += notes
    correct = {key: preds[key] == y for key in preds}
    tests = {
        "stacking_vs_best_member": mcnemar(
            correct[STACKING], correct[f"member:{best}"], a="stacking", b=best, exact_below=cfg.exact_below
        ),
        "stacking_vs_soft_vote": mcnemar(
            correct[STACKING], correct[SOFT], a="stacking", b="soft voting", exact_below=cfg.exact_below
        ),
    }
    for name in baselines:
        tests[f"stacking_vs_{name}"] = mcnemar(
            correct[STACKING], correct[f"baseline:{name}"], a="stacking", b=name, exact_below=cfg.exact_below
        )
    helps, verdict = _verdict(by_key, best, tests, cfg.alpha)
    undefined = methods[0].metrics.undefined_classes
    for c in undefined:
        warnings.append(
            f"class '{c}' has no {cfg.split} images: its recall, F1 and ROC-AUC are undefined and left out of the macro averages"
        )
    table = format_table(methods, cfg.confidence)
    md, js, figures = write_reports(
        cfg, methods, best, rule, tests, helps, verdict, table, classes, undefined, data, meta_json, warnings
    )
    for w in warnings:
        log.warning("%s", w)
    return EvalResult(
        methods=methods,
        best_member=best,
        best_member_rule=rule,
        tests=tests,
        stacking_helps=helps,
        verdict=verdict,
        table=table,
        classes=classes,
        undefined_classes=undefined,
        n=int(y.size),
        report_md=md,
        report_json=js,
        figures=figures,
        warnings=tuple(warnings),
    )
