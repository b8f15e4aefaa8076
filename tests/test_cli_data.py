"""`cxr data split|stats` and the umbrella CLI: clear messages and exit code 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.cli.main import app
from tests.dataset_factory import make_dataset

runner = CliRunner()


def test_split_then_stats(tmp_path: Path) -> None:
    ds = make_dataset(
        tmp_path / "ds", counts={"COVID": 10, "Lung_Opacity": 1, "Normal": 20, "Viral Pneumonia": 10}
    )
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["data", "split", str(ds), "--output", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "Normal" in res.output and "41" in res.output
    assert "split 'val' has no image of class 'Lung_Opacity'" in res.output
    res = runner.invoke(app, ["data", "stats", str(out)])
    assert res.exit_code == 0
    lines = {ln.split()[0]: ln.split()[1:] for ln in res.output.splitlines() if ln.strip()}
    assert lines["Normal"] == ["16", "2", "2", "20"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "split", "{tmp}/missing"], "does not exist"),
        (["data", "stats", "{tmp}/missing.csv"], "cxr data split"),
    ],
)
def test_bad_input_exits_2_without_traceback(tmp_path: Path, args: list[str], needle: str) -> None:
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_stale_manifest_exits_2(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", counts=10)
    out = tmp_path / "m.csv"
    assert runner.invoke(app, ["data", "split", str(ds), "--output", str(out)]).exit_code == 0
    next((ds / "COVID" / "images").iterdir()).unlink()
    res = runner.invoke(app, ["data", "stats", str(out)])
    assert res.exit_code == 2 and "no longer matches" in res.output


@pytest.mark.parametrize("script", ["cxr", "cxr-predict", "cxr-bench"])
def test_help_works(script: str) -> None:
    exe = Path(sys.executable).parent / script
    if not exe.exists():
        pytest.skip(f"{script} console script not installed in this environment")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


@pytest.mark.parametrize("option", ["--output", "-o"])
def test_synth_writes_where_output_says(tmp_path: Path, option: str) -> None:
    res = runner.invoke(
        app, ["data", "synth", option, str(tmp_path / "ds"), "--per-class", "2", "--size", "32"]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "ds").rglob("*.png"))) == 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "synth", "--per-class", "2"], "Missing option '--output'"),
        (["data", "synth", "{tmp}/ds"], "Missing option '--output'"),  # not a positional
        (["data", "split", "{tmp}", "--out", "{tmp}/m.csv"], "No such option: --out"),
    ],
)
def test_one_spelling_per_idea(tmp_path: Path, args: list[str], needle: str) -> None:
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "ds").exists() and not (tmp_path / "m.csv").exists()
