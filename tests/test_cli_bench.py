"""`cxr-bench run` through Typer's CliRunner: the 100-column table and its legend, outputs, peaks given,
exit code 2 on bad input, one spelling per option."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.bench.report import format_terminal
from cxr.bench.run import BenchConfig, run_bench
from cxr.bench.types import BenchReport
from cxr.cli.bench import app
from tests.onnx_factory import make_fused_model
from tests.test_bench_support import fixed_batch, variant_of, with_card

runner = CliRunner()
FAST = ["--warmup", "1", "--iterations", "3", "--quiet"]


def test_run_prints_table_and_writes_files(fused_model: Path, tmp_path: Path) -> None:
    args = ["run", "-m", str(fused_model), "-b", "2", "-c", "1,2", "--no-pool", "--peak-gflops", "234"]
    args += ["-o", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"), *FAST]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "p50 ms" in res.output and "img/s" in res.output and "eff %" in res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(r["concurrency"], r["mode"]) for r in doc["rows"]] == [(1, "session"), (2, "session")]
    assert doc["machine"]["peaks"] == {"fp32": 234.0}
    assert "cxr-bench run" in doc["command"] or doc["command"]
    assert (tmp_path / "r.md").read_text().startswith("# cxr-bench results")


@pytest.mark.parametrize(
    ("args", "env", "peak", "source"),
    [
        (["--peak-gflops", "50"], None, 50.0, "option"),
        (["--peak-gflops", "fp32=60,int8=900"], "70", 60.0, "option"),
        ([], "fp32=80", 80.0, "CXR_PEAK_GFLOPS"),
        ([], "80", 80.0, "CXR_PEAK_GFLOPS"),
    ],
)
def test_a_given_peak_is_the_efficiency_denominator(
    fused_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    peak: float,
    source: str,
) -> None:
    if env is None:
        monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    else:
        monkeypatch.setenv("CXR_PEAK_GFLOPS", env)
    res = runner.invoke(app, ["run", "-m", str(fused_model), "-o", str(tmp_path / "r.json"), *FAST, *args])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    (row,) = doc["rows"]
    assert doc["machine"]["peak_source"] == source and doc["machine"]["peaks"]["fp32"] == peak
    assert row["peak_gflops"] == peak and row["efficiency_pct"] == pytest.approx(100 * row["gflops"] / peak)
    assert f"GEMM peaks: FP32 {peak:.0f}" in res.output


def test_without_a_peak_efficiency_is_left_out_with_a_note(
    fused_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    res = runner.invoke(app, ["run", "-m", str(fused_model), *FAST])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # notes are wrapped to 100 columns
    assert "efficiency % not computed for fp32 rows" in out and "--peak-gflops fp32=" in out
    assert "benchmarks/peak.py" in out


def test_min_seconds_alone(fused_model: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["run", "-m", str(fused_model), "--min-seconds", "0.05", "--quiet", "-o", str(tmp_path / "r.json")],
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["seconds"] >= 0.05 and row["iterations"] >= 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "gpu"], "unknown provider 'gpu'"),
        (["-b", "one"], "not a comma-separated list"),
        (["-t", "0"], "thread counts must be >= 1"),
        (["-c", "0"], "concurrency must be >= 1"),
        (["--iterations", "0"], "iterations must be >= 1"),
        (["--peak-gflops", "fast"], "is not a number"),
        (["--peak-gflops", "fp64=3"], "unknown precision 'fp64'"),
        (["-p", "cpu", "--precision", "bf16"], "provider 'cpu' cannot run precision 'bf16'"),
    ],
)
def test_bad_options_exit_2(fused_model: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["run", "-m", str(fused_model), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_bad_inputs_exit_2(fused_model: Path, tmp_path: Path) -> None:
    fixed = fixed_batch(fused_model, tmp_path / "fixed.onnx", 1)
    stranger = variant_of(make_fused_model(tmp_path / "other.onnx", seed=9), tmp_path / "other_int8.onnx")
    (tmp_path / "empty").mkdir()
    cases = [
        (["run", "-m", str(fixed), "-b", "1,8"], "takes batch size 1 only"),
        (["run", "-m", str(fused_model), "--variant", str(stranger)], "does not belong to the same model"),
        (["run", "-m", str(fused_model), "--folder", str(tmp_path / "empty")], "holds no image files"),
        (["run", "-m", str(tmp_path / "missing.onnx")], "does not exist"),
        (["run", "--variant", str(stranger)], "Missing option '--model'"),
    ]
    for args, message in cases:
        res = runner.invoke(app, [*args, *FAST])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_runs_with_torch_unimportable(fused_model: Path, tmp_path: Path) -> None:
    """cxr-bench must work where torch cannot be imported, and must not import it itself."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typer.testing import CliRunner\n"
        "from cxr.cli.bench import app\n"
        f"res = CliRunner().invoke(app, ['run', '-m', {str(fused_model)!r}, '--warmup', '1', '--iterations', '2'])\n"
        "print(res.output)\n"
        "assert res.exit_code == 0, res.output\n"
        "assert sys.modules['torch'] is None\n"
        "assert not any(m in sys.modules for m in ('timm', 'onnx', 'sklearn'))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-m", "x.onnx", "y.onnx"], "Got unexpected extra argument"),  # a model is --model only
        (["run", "-m", "x.onnx", "--members", "m/"], "No such option: --members"),  # it is gone, not hidden
        (["run", "-m", "x.onnx", "--torch-run", "r/"], "No such option: --torch-run"),  # benchmarks/study.py
        (["peak"], "No such command 'peak'"),  # python benchmarks/peak.py
        (["compare", "a.json", "b.json"], "No such command 'compare'"),  # python benchmarks/compare.py
    ],
)
def test_one_spelling_per_option(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and message in res.output, res.output


def _report_with_long_names(tmp_path: Path, fused_model: Path) -> BenchReport:
    """A report whose labels and provider cells are as long as real ones get (INT8 file, a fallback)."""
    model = tmp_path / "ensemble_of_five_members_fused_with_heatmaps_and_ood.onnx"
    int8 = variant_of(with_card(fused_model, model), tmp_path / f"{model.stem}.int8.onnx")
    cfg = BenchConfig(
        model=model,
        variants=(int8,),
        providers=("cpu", "cuda"),
        batch_sizes=(1, 8),
        concurrency=(1, 2),
        warmup=0,
    )
    return run_bench(dataclasses.replace(cfg, iterations=2, peak_gflops="fp32=365,int8=4407"))


def test_the_default_table_fits_100_columns_with_a_legend(fused_model: Path, tmp_path: Path) -> None:
    report = _report_with_long_names(tmp_path, fused_model)
    text = format_terminal(report)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    table = text.split("\n\n")[1].splitlines()
    assert table[0].split() == ["configuration", "provider", "b", "thr", "cli", "p50", "ms", "p99", "ms"] + [
        "ms/img", "img/s", "eff", "%", "RSS", "MB"
    ]  # fmt: skip
    assert len(table) == 2 + len(report.rows) and "cpu!" in text  # the fallback is marked
    for column in (
        "b = images per call",
        "thr = intra-op threads",
        "cli = client threads",
        "eff % = achieved",
    ):
        assert column in " ".join(text.split()), column
    assert "--wide: every column" in text


def test_wide_prints_every_column_and_explains_each(fused_model: Path, tmp_path: Path) -> None:
    report = _report_with_long_names(tmp_path, fused_model)
    wide = format_terminal(report, wide=True)
    header = wide.split("\n\n")[1].splitlines()[0]
    for column in ("p90 ms", "p95 ms", "max ms", "mean±std ms", "agree %", "load s", "outl"):
        assert column in header
    legend = " ".join(wide.split())
    assert "outl = calls above Q3 + 1.5 IQR" in legend and "load s = seconds to create" in legend
    assert "asked cuda!" in wide and max(len(line) for line in wide.splitlines()) > 100


def test_cli_wide_flag(fused_model: Path) -> None:
    narrow = runner.invoke(app, ["run", "-m", str(fused_model), *FAST])
    wide = runner.invoke(app, ["run", "-m", str(fused_model), "--wide", *FAST])
    assert narrow.exit_code == wide.exit_code == 0
    assert "outl" not in narrow.output and "outl" in wide.output
