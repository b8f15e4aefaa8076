"""`cxr stack`, `cxr fuse`, `cxr evaluate` and `cxr train probe`: one spelling per idea (RUN_DIR, --members,
--output/-o), the summaries the library describes, and the old spellings refused as usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return res.exit_code, res.output


@pytest.fixture()
def synthetic_run(tmp_path: Path) -> Path:
    pytest.importorskip("skl2onnx")
    from tests.run_factory import SyntheticRun, write_synthetic_run

    return write_synthetic_run(SyntheticRun(tmp_path / "run"))


def listed_commands(help_text: str) -> set[str]:
    """The command names a group's --help lists under "Commands:"."""
    section = help_text.split("Commands:")[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}


def test_stack_fuse_evaluate_sit_beside_train_and_export() -> None:
    code, out = invoke("--help")
    assert code == 0 and {
        "train",
        "export",
        "stack",
        "fuse",
        "evaluate",
        "evaluate-folds",
    } <= listed_commands(out)
    code, out = invoke("train", "--help")
    assert code == 0 and listed_commands(out) == {"base", "probe"}, out


def test_stack_then_evaluate(synthetic_run: Path, tmp_path: Path) -> None:
    code, out = invoke("stack", str(synthetic_run), "--cv-folds", "3", "--members", "gamma,alpha")
    assert code == 0, out
    said = [line for line in out.splitlines() if not line.startswith("warning: ")]  # logged warnings: stderr
    assert said[0].startswith("meta-learner logistic_regression") and " on 40 val images" in said[0], out
    assert "members (feature order): gamma, alpha" in out and "wrote " in out
    code, out = invoke(
        "evaluate", str(synthetic_run), "--bootstrap", "20", "--no-plots", "-o", str(tmp_path / "ev")
    )
    assert code == 0, out
    said = [line for line in out.splitlines() if not line.startswith("warning: ")]
    assert said[0].startswith("test split: ") and "stacking" in out
    assert (tmp_path / "ev" / "report.md").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fuse", "{run}", "--out", "{tmp}/e.onnx"], "No such option: --out"),
        (["evaluate", "{run}", "--out", "{tmp}/ev"], "No such option: --out"),
        (["export", "{run}", "--models", "alpha"], "No such option: --models"),
        (["verify", "{run}", "--models", "alpha"], "No such option: --models"),
        (["demo", "--run-dir", "{run}"], "No such option: --run-dir"),
        (["train", "stack", "{run}"], "No such command 'stack'"),
    ],
)
def test_old_spellings_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    code, out = invoke(*(a.format(run=tmp_path / "run", tmp=tmp_path) for a in args))
    assert code == 2 and needle in out, out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fuse", "{run}", "-o", "{run}/e.onnx", "--no-end-to-end"], "meta.onnx"),
        (["evaluate", "{run}", "-o", "{run}/ev"], "stack"),
        (["stack", "{run}", "--members", ","], "names no member"),
    ],
)
def test_a_run_without_its_inputs_is_refused_plainly(tmp_path: Path, args: list[str], needle: str) -> None:
    run = tmp_path / "run"
    (run / "members").mkdir(parents=True)
    code, out = invoke(*(a.format(run=run) for a in args))
    assert code == 2 and needle in out and "Traceback" not in out, out
