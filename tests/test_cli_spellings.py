"""One spelling per CLI idea (RUN_DIR, --members, --model, --output), and the old spellings of the last
release: each still works, hidden from --help, and prints the deprecation notice on stderr.

The cheap commands run for real under both spellings; the training-side ones are compared on a failure
(the same message and exit code, plus the notice), and ``--old --new`` together shows the alias reaches the
new option. `cxr train base -m` is in ``test_train_cli.py``, `cxr-bench run MODEL` in ``test_bench_cli.py``,
`cxr export-triton MODEL OUT` in ``test_triton_export.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cxr.cli.main import app
from tests.dataset_factory import make_dataset

runner = CliRunner()
NOTICE_TEXT = "is deprecated and will be removed in the next release"


def invoke(args: list[str]) -> tuple[int, str]:
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    return res.exit_code, res.output


def without_notice(output: str) -> str:
    return "".join(line for line in output.splitlines(keepends=True) if NOTICE_TEXT not in line)


def test_stack_fuse_evaluate_sit_beside_train_and_export() -> None:
    code, out = invoke(["--help"])
    assert code == 0
    commands = {
        line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 1
    }
    assert {"train", "export", "stack", "fuse", "evaluate"} <= commands
    code, out = invoke(["train", "--help"])
    assert code == 0 and "probe" in out and "stack" not in out.split("Commands")[1]


@pytest.mark.parametrize(
    ("command", "hidden", "shown"),
    [
        (["data", "split"], ["--out "], ["--output", "-o"]),
        (["data", "synth"], ["OUT"], ["--output"]),
        (["export"], ["--models"], ["--members", "RUN_DIR"]),
        (["verify"], ["--models"], ["--members", "RUN_DIR"]),
        (["stack"], [], ["--members", "RUN_DIR"]),
        (["fuse"], ["--out "], ["--output", "RUN_DIR"]),
        (["evaluate"], ["--out "], ["--output", "RUN_DIR"]),
        (["demo"], ["--run-dir"], ["RUN_DIR"]),
        (["export-triton"], ["MODEL", "OUT"], ["--model", "--output"]),
        (["bench", "run"], ["--members ", "MODEL"], ["--model", "--member-models", "--output"]),
        (["predict", "scan"], [], ["--model", "--output"]),
        (["predict", "image"], [], ["--model"]),
    ],
)
def test_help_shows_only_the_new_spellings(command: list[str], hidden: list[str], shown: list[str]) -> None:
    code, out = invoke([*command, "--help"])
    assert code == 0, out
    for spelling in shown:
        assert spelling in out, spelling
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    for spelling in hidden:  # options anywhere, positionals in the usage line
        assert spelling not in (out if spelling.startswith("-") else usage.replace("RUN_DIR", "")), spelling


def test_data_split_out(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", counts=10)
    for option, name in (("--out", "old.csv"), ("--output", "new.csv")):
        code, out = invoke(["data", "split", str(ds), option, str(tmp_path / name)])
        assert code == 0, out
        assert (f"`--out` {NOTICE_TEXT}; use `--output`" in out) == (option == "--out"), out
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "new.csv").read_text()


def test_data_synth_positional_out(tmp_path: Path) -> None:
    small = ["--per-class", "2", "--size", "32"]
    code, out = invoke(["data", "synth", str(tmp_path / "old"), *small])
    assert code == 0 and "OUT as a positional argument of `cxr data synth` " + NOTICE_TEXT in out, out
    code, out = invoke(["data", "synth", "--output", str(tmp_path / "new"), *small])
    assert code == 0 and NOTICE_TEXT not in out, out
    old = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*.png"))
    assert old and old == sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*.png"))
    code, out = invoke(["data", "synth", *small])
    assert code == 2 and "needs --output" in out, out


@pytest.fixture()
def synthetic_run(tmp_path: Path) -> Path:
    pytest.importorskip("skl2onnx")
    from cxr.stack.synthetic import SyntheticRun, write_synthetic_run

    return write_synthetic_run(SyntheticRun(tmp_path / "run"))


def test_train_stack_is_cxr_stack(synthetic_run: Path) -> None:
    args = [str(synthetic_run), "--cv-folds", "3", "--members", "gamma,alpha"]
    code, old = invoke(["train", "stack", *args])
    assert code == 0 and f"`cxr train stack` {NOTICE_TEXT}; use `cxr stack`" in old, old
    code, new = invoke(["stack", *args])
    assert code == 0 and NOTICE_TEXT not in new, new
    assert "members (feature order): gamma, alpha" in new
    assert without_notice(old).splitlines()[0] == new.splitlines()[0]


def test_evaluate_out(synthetic_run: Path, tmp_path: Path) -> None:
    assert invoke(["stack", str(synthetic_run), "--cv-folds", "3"])[0] == 0
    fast = ["--bootstrap", "20", "--no-plots"]
    code, old = invoke(["evaluate", str(synthetic_run), *fast, "--out", str(tmp_path / "old")])
    assert code == 0 and f"`--out` {NOTICE_TEXT}; use `--output`" in old, old
    code, new = invoke(["evaluate", str(synthetic_run), *fast, "-o", str(tmp_path / "new")])
    assert code == 0 and NOTICE_TEXT not in new, new
    assert (tmp_path / "old" / "report.md").is_file() and (tmp_path / "new" / "report.md").is_file()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["fuse", "{run}", "--out", "{tmp}/e.onnx"], ["fuse", "{run}", "--output", "{tmp}/e.onnx"]),
        (["evaluate", "{run}", "--out", "{tmp}/ev"], ["evaluate", "{run}", "--output", "{tmp}/ev"]),
        (["export", "{run}", "--models", "alpha"], ["export", "{run}", "--members", "alpha"]),
        (["verify", "{run}", "--models", "alpha"], ["verify", "{run}", "--members", "alpha"]),
        (["train", "stack", "{run}"], ["stack", "{run}"]),
        (["demo", "--run-dir", "{run}", "--per-class", "1"], ["demo", "{run}", "--per-class", "1"]),
        (["bench", "run", "{tmp}/no.onnx"], ["bench", "run", "--model", "{tmp}/no.onnx"]),
        (
            ["bench", "run", "-m", "{tmp}/no.onnx", "--members", "{tmp}"],
            ["bench", "run", "-m", "{tmp}/no.onnx", "--member-models", "{tmp}"],
        ),
        (
            ["export-triton", "{tmp}/no.onnx", "{tmp}/repo"],
            ["export-triton", "-m", "{tmp}/no.onnx", "-o", "{tmp}/repo"],
        ),
    ],
)
def test_old_spelling_fails_the_same_way_with_the_notice(
    tmp_path: Path, old: list[str], new: list[str]
) -> None:
    """Where a real run is slow (training-side stages), a run directory without what they need: the old
    spelling gives the new one's error and exit code, after the notice."""
    run = tmp_path / "run"
    (run / "members").mkdir(parents=True)

    def fill(args: list[str]) -> list[str]:
        return [a.format(run=run, tmp=tmp_path) for a in args]

    old_code, old_out = invoke(fill(old))
    new_code, new_out = invoke(fill(new))
    assert NOTICE_TEXT in old_out and NOTICE_TEXT not in new_out, old_out
    assert old_code == new_code != 0, (old_out, new_out)
    assert without_notice(old_out) == new_out
    assert "Traceback" not in old_out


@pytest.mark.parametrize(
    "args",
    [
        ["data", "split", "{tmp}", "--out", "{tmp}/a.csv", "--output", "{tmp}/b.csv"],
        ["fuse", "{tmp}", "--out", "{tmp}/a.onnx", "-o", "{tmp}/b.onnx"],
        ["evaluate", "{tmp}", "--out", "{tmp}/a", "--output", "{tmp}/b"],
        ["export", "{tmp}", "--models", "a", "--members", "b"],
        ["demo", "{tmp}", "--run-dir", "{tmp}/other"],
        ["bench", "run", "-m", "{tmp}/m.onnx", "--members", "{tmp}", "--member-models", "{tmp}"],
    ],
)
def test_old_and_new_spelling_together_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    code, out = invoke([a.format(tmp=tmp_path) for a in args])
    assert code == 2 and "(its old spelling) were both given" in out, out


def test_leftover_positionals_are_refused(tmp_path: Path) -> None:
    code, out = invoke(["export-triton", "-m", "a.onnx", "-o", str(tmp_path), "extra"])
    assert code == 2 and "unexpected argument(s): extra" in out, out


def test_the_notice_goes_to_stderr(tmp_path: Path) -> None:
    res = runner.invoke(app, ["fuse", str(tmp_path), "--out", str(tmp_path / "e.onnx")])
    assert NOTICE_TEXT in res.stderr and NOTICE_TEXT not in res.stdout


def test_a_deprecated_command_keeps_its_signature() -> None:
    from cxr.cli import stack
    from cxr.cli.common import deprecated_alias

    alias = typer.Typer()
    alias.command()(deprecated_alias(stack.stack, "old", "new"))
    res = runner.invoke(alias, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--estimator" in res.output
