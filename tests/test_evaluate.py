"""`cxr evaluate` on synthetic runs: the report, undefined classes, and a plain verdict either way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from cxr.errors import DataError  # noqa: E402
from cxr.evaluate import EvalConfig, evaluate  # noqa: E402
from cxr.labels import NOTICE  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta  # noqa: E402
from tests.run_factory import SyntheticRun, write_synthetic_run  # noqa: E402

NO_LUNG_OPACITY_TEST = {  # 100 validation predictions: the minimum a temperature is fitted on
    "COVID": (4, 25, 20),
    "Lung_Opacity": (4, 25, 0),
    "Normal": (4, 25, 20),
    "Viral Pneumonia": (4, 25, 20),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_synthetic_run(
        SyntheticRun(tmp_path_factory.mktemp("ev") / "run", per_class=NO_LUNG_OPACITY_TEST)
    )
    fit_meta(MetaConfig(run, cv_folds=3))
    return run


@pytest.fixture(scope="module")
def result(run: Path):
    return evaluate(EvalConfig(run, n_bootstrap=200))


def test_rows_are_members_then_voting_then_stacking(result) -> None:
    keys = [m.key for m in result.methods]
    assert keys == [f"member:{n}" for n in ("alpha", "beta", "delta", "epsilon", "gamma")] + [
        "soft_vote",
        "majority_vote",
        "stacking",
        "stacking_uncalibrated",  # the meta-learner has a temperature: its output before it, for the ECE
    ]
    lines = result.table.splitlines()
    assert "accuracy [95% CI]" in lines[0] and "macro-F1 [95% CI]" in lines[0] and "ECE" in lines[0]
    assert len(lines) == 2 + 9 and lines[-2].startswith("stacking (logistic_regression)")
    assert lines[-1].startswith("stacking (before calibration)")


def test_class_without_test_images_is_reported_undefined(result) -> None:
    assert result.undefined_classes == ("Lung_Opacity",)
    report = json.loads(result.report_json.read_text())
    stacking = report["methods"]["stacking"]["per_class"]["Lung_Opacity"]
    assert stacking["support"] == 0 and stacking["recall"] is None and stacking["f1"] is None
    assert stacking["roc_auc"] is None
    md = result.report_md.read_text()
    assert "Lung_Opacity has no test images" in md and "undefined" in md
    assert any("Lung_Opacity" in w for w in result.warnings)


def test_report_contents_and_figures(result, run: Path) -> None:
    report = json.loads(result.report_json.read_text())
    assert report["notice"] == NOTICE and report["n"] == 60
    assert set(report["tests"]) == {"stacking_vs_best_member", "stacking_vs_soft_vote"}
    assert (
        report["best_member"]["name"] == result.best_member and "validation" in report["best_member"]["rule"]
    )
    acc = report["methods"]["stacking"]["accuracy"]
    lo, hi = report["methods"]["stacking"]["accuracy_ci"]
    assert lo <= acc <= hi
    md = result.report_md.read_text()
    assert md.index(result.verdict) < md.index("## Comparison") and NOTICE in md
    names = {p.name for p in result.figures}
    assert {"confusion_stacking.png", "reliability_stacking.png", "confusion_member_alpha.png"} <= names
    # a confusion matrix per method but stacking before calibration (stacking's labels), a reliability per method
    assert len(result.figures) == 8 + 9 and all((run / "eval" / n).stat().st_size > 1000 for n in names)


def test_metrics_match_a_recomputation(result, run: Path) -> None:
    from cxr.stack.features import load_split

    data = load_split(run, ("alpha", "beta", "delta", "epsilon", "gamma"), "test")
    soft = data.member_probs.mean(axis=1).argmax(axis=1)
    assert result.method("soft_vote").metrics.accuracy == pytest.approx(float(np.mean(soft == data.labels)))
    alpha = data.member_probs[:, 0].argmax(axis=1)
    assert result.method("member:alpha").metrics.accuracy == pytest.approx(
        float(np.mean(alpha == data.labels))
    )
    t = result.tests["stacking_vs_best_member"]
    st = result.method("stacking").correct
    best = result.method(f"member:{result.best_member}").correct
    assert (t.a_only, t.b_only) == (int(np.sum(st & ~best)), int(np.sum(~st & best)))


def test_verdict_says_plainly_when_stacking_does_not_help(tmp_path: Path) -> None:
    # one member is (nearly) perfect: stacking cannot be significantly better than it
    members = {"oracle": 12.0, "noise1": 0.0, "noise2": 0.0}
    run = write_synthetic_run(SyntheticRun(tmp_path / "run", members=members))
    fit_meta(MetaConfig(run, cv_folds=3))
    res = evaluate(EvalConfig(run, n_bootstrap=50, plots=False))
    assert res.best_member == "oracle"
    assert not res.stacking_helps
    assert res.verdict.startswith("Stacking does not")
    assert "Stacking does not" in res.report_md.read_text()
    assert res.figures == ()


def test_verdict_says_when_stacking_helps(tmp_path: Path) -> None:
    members = {f"m{i}": 1.0 for i in range(5)}  # five weak, independent members
    per_class = {c: (4, 60, 60) for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")}
    run = write_synthetic_run(SyntheticRun(tmp_path / "run", members=members, per_class=per_class, seed=1))
    fit_meta(MetaConfig(run, cv_folds=3, grid={"C": (1.0,)}))
    res = evaluate(EvalConfig(run, n_bootstrap=50, plots=False))
    assert res.stacking_helps and res.verdict.startswith("Stacking helps")
    assert res.tests["stacking_vs_best_member"].p_value < 0.05


def test_missing_meta_learner_is_named(tmp_path: Path) -> None:
    run = write_synthetic_run(SyntheticRun(tmp_path / "run"))
    with pytest.raises(DataError, match="cxr stack"):
        evaluate(EvalConfig(run, plots=False))


def test_cli_evaluate(run: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from cxr.cli import evaluate as evaluate_cli

    app = typer.Typer()
    app.command()(evaluate_cli.evaluate)
    r = CliRunner().invoke(
        app, [str(run), "--bootstrap", "20", "--no-plots", "--output", str(tmp_path / "ev")]
    )
    assert r.exit_code == 0, r.output
    assert "soft voting" in r.output and "stacking" in r.output and NOTICE in r.output
    assert (tmp_path / "ev" / "report.md").is_file()
    r = CliRunner().invoke(app, [str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "error:" in r.output


def test_cli_stack(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from cxr.cli import stack

    run = write_synthetic_run(SyntheticRun(tmp_path / "run"))
    app = typer.Typer()
    app.command()(stack.stack)
    r = CliRunner().invoke(app, [str(run), "--cv-folds", "3", "--members", "gamma,alpha"])
    assert r.exit_code == 0, r.output
    assert "members (feature order): gamma, alpha" in r.output
    assert json.loads((run / "stack" / "meta.json").read_text())["member_order"] == ["gamma", "alpha"]
    r = CliRunner().invoke(app, [str(run), "--estimator", "svm"])
    assert r.exit_code == 2 and "unknown meta-learner 'svm'" in r.output


def test_evaluation_needs_neither_torch_nor_scikit_learn(run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    # an import finder that refuses them, as on an install without them (``sys.modules[m] = None`` would
    # leave a None entry that scipy's array-API helpers, used by the Wilson intervals, trip over)
    code = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'sklearn', 'skl2onnx', 'onnx'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from pathlib import Path\n"
        "from cxr.evaluate import EvalConfig, evaluate\n"
        f"res = evaluate(EvalConfig(Path({str(run)!r}), out_dir=Path({str(tmp_path)!r}), n_bootstrap=10, plots=False))\n"
        "assert res.calibration is not None and res.operating_points\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'onnx')]\n"
        "print(res.best_member)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report.json").is_file()


@pytest.mark.parametrize("agree_with_truth", [True, False])
def test_a_baseline_joins_the_table_with_a_test_against_stacking(
    tmp_path: Path, agree_with_truth: bool
) -> None:
    """The linear probe (or any reference) is a row beside the members, tested against stacking."""
    from cxr.train.predictions import PredictionTable, read_predictions, write_predictions

    run = write_synthetic_run(SyntheticRun(tmp_path / "run"))
    fit_meta(MetaConfig(run, cv_folds=3))
    ref = read_predictions(run / "members" / "alpha" / "predictions" / "test.csv")
    y = ref.label_indices()
    k = len(ref.classes)
    guess = y if agree_with_truth else (y + 1) % k
    probs = np.eye(k)[guess] * 0.9 + 0.1 / k
    order = np.random.default_rng(0).permutation(len(y))  # the baseline may list images in any order
    table = PredictionTable(
        "probe", "test", ref.manifest_digest, ref.classes, tuple(np.array(ref.paths)[order]),
        tuple(np.array(ref.labels)[order]), probs[order],
    )  # fmt: skip
    write_predictions(table, run / "baselines" / "probe")
    res = evaluate(EvalConfig(run, n_bootstrap=50, plots=False))
    row = res.method("baseline:probe")
    assert row.metrics.accuracy == (1.0 if agree_with_truth else 0.0)
    assert "stacking_vs_probe" in res.tests and "probe (baseline)" in res.table
    assert "only the test split" in res.report_md.read_text()  # the validation split's three jobs are said


def test_every_methods_class_per_image_is_written_for_pooling(result, run: Path) -> None:
    from cxr.evaluate.methods import read_table, table_path
    from cxr.stack.features import load_split

    table = read_table(table_path(run / "eval", "test"), result.classes)
    data = load_split(run, ("alpha", "beta", "delta", "epsilon", "gamma"), "test")
    assert table.paths == data.paths and np.array_equal(table.labels, data.labels)
    assert set(table.predictions) == {m.key for m in result.methods}
    assert np.array_equal(table.predictions["member:beta"], data.member_probs[:, 1].argmax(axis=1))
    assert np.array_equal(table.predictions["stacking"], result.method("stacking").predictions)
