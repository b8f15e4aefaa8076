"""`cxr-bench run` / `compare` through Typer's CliRunner: outputs, ratios, exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.cli.bench import app
from tests.onnx_factory import make_fused_model
from tests.test_bench_support import fixed_batch, variant_of

runner = CliRunner()
FAST = ["--warmup", "1", "--iterations", "3", "--quiet", "--peak-size", "32"]


@pytest.fixture(scope="module")
def two_reports(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    out = []
    for name, threads in (("a", "1"), ("b", "1,2")):
        path = tmp / f"{name}.json"
        res = runner.invoke(
            app, ["run", "-m", str(fused_model), "-b", "1,2", "-t", threads, "-o", str(path), *FAST]
        )
        assert res.exit_code == 0, res.output
        out.append(path)
    return out[0], out[1]


def test_run_prints_table_and_writes_files(fused_model: Path, tmp_path: Path) -> None:
    args = ["run", "-m", str(fused_model), "-b", "2", "-c", "1,2", "--no-pool", "--peak-gflops", "234"]
    args += ["-o", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"), *FAST]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "p50 ms" in res.output and "img/s" in res.output and "eff %" in res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(r["concurrency"], r["mode"]) for r in doc["rows"]] == [(1, "session"), (2, "session")]
    assert doc["machine"]["peak_gflops"] == 234.0
    assert "cxr-bench run" in doc["command"] or doc["command"]
    assert (tmp_path / "r.md").read_text().startswith("# cxr-bench results")


def test_peak_from_environment(fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_PEAK_GFLOPS", "50")
    res = runner.invoke(app, ["run", "-m", str(fused_model), "-o", str(tmp_path / "r.json"), *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["machine"]["peak_source"] == "CXR_PEAK_GFLOPS" and doc["rows"][0]["efficiency_pct"] > 0


@pytest.mark.parametrize(
    ("args", "env", "peak", "source"),
    [
        (["--peak-gflops", "50"], None, 50.0, "option"),
        (["--peak-gflops", "fp32=60,int8=900"], "70", 60.0, "option"),
        ([], "fp32=80", 80.0, "CXR_PEAK_GFLOPS"),
        ([], None, None, "measured"),
    ],
)
def test_a_given_peak_wins_over_the_measured_one(
    fused_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    peak: float | None,
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
    fp32 = doc["machine"]["peaks"]["fp32"]
    assert fp32["source"] == source and doc["machine"]["peak_source"] == source
    assert row["peak_gflops"] == fp32["gflops"] == (peak if peak is not None else fp32["gflops"]) > 0
    assert row["efficiency_pct"] == pytest.approx(100 * row["gflops"] / row["peak_gflops"])
    assert "GEMM peaks: FP32" in res.output


def test_without_measuring_efficiency_is_left_out_with_a_note(
    fused_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    res = runner.invoke(app, ["run", "-m", str(fused_model), "--no-measure-peak", *FAST])
    assert res.exit_code == 0, res.output
    assert "efficiency % not computed for fp32 rows" in res.output and "--peak-gflops fp32=" in res.output


def test_min_seconds_alone(fused_model: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["run", "-m", str(fused_model), "--min-seconds", "0.05", "--quiet", "-o", str(tmp_path / "r.json")],
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["seconds"] >= 0.05 and row["iterations"] >= 5


def test_compare_shows_ratios(two_reports: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_reports
    res = runner.invoke(app, ["compare", str(a), str(b), "--markdown", str(tmp_path / "c.md")])
    assert res.exit_code == 0, res.output
    assert "B/A" in res.output and "x" in res.output
    assert res.output.count("only in B") == 2  # b ran threads 2 as well, for batch 1 and 2
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("# cxr-bench comparison") and md.count("\n| ") == 1 + 2


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
        (["run", "--variant", str(stranger)], "needs --model MODEL"),
        (["compare", str(fused_model), str(fused_model)], "not valid JSON"),
    ]
    for args, message in cases:
        res = runner.invoke(app, [*args, *FAST] if args[0] == "run" else args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_compare_refuses_a_json_that_is_not_a_report(tmp_path: Path, two_reports: tuple[Path, Path]) -> None:
    other = tmp_path / "x.json"
    other.write_text(json.dumps({"rows": []}))
    res = runner.invoke(app, ["compare", str(two_reports[0]), str(other)])
    assert res.exit_code == 2 and "not a cxr-bench report" in res.output


def test_plot_without_matplotlib_fails_before_measuring(
    fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr.bench import plot as bench_plot

    monkeypatch.setattr(bench_plot, "matplotlib_missing", lambda: True)
    res = runner.invoke(app, ["run", "-m", str(fused_model), "--plot", str(tmp_path / "p.png"), *FAST])
    assert res.exit_code == 2 and "matplotlib" in res.output and "p50" not in res.output


def test_runs_with_torch_unimportable(fused_model: Path, tmp_path: Path) -> None:
    """cxr-bench must work where torch cannot be imported, and must not import it itself."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typer.testing import CliRunner\n"
        "from cxr.cli.bench import app\n"
        f"res = CliRunner().invoke(app, ['run', '-m', {str(fused_model)!r}, '--torch-run', {str(tmp_path)!r}, "
        "'--warmup', '1', '--iterations', '2'])\n"
        "print(res.output)\n"
        "assert res.exit_code == 0, res.output\n"
        "assert 'torch is not installed' in res.output, res.output\n"
        "assert sys.modules['torch'] is None\n"
        "assert not any(m in sys.modules for m in ('timm', 'onnx', 'sklearn'))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_positional_model_still_works_with_a_notice(fused_model: Path, tmp_path: Path) -> None:
    """`cxr-bench run MODEL` (the last release's spelling): the same report as `--model MODEL`, plus the notice."""
    for args, name in (
        (["run", str(fused_model)], "old.json"),
        (["run", "--model", str(fused_model)], "new.json"),
    ):
        res = runner.invoke(app, [*args, "-o", str(tmp_path / name), *FAST])
        assert res.exit_code == 0, res.output
        notice = "MODEL as a positional argument of `cxr-bench run` is deprecated"
        assert (notice in res.output) == (name == "old.json"), res.output
    old, new = (json.loads((tmp_path / n).read_text()) for n in ("old.json", "new.json"))
    assert [(r["key"], r["model_sha256"]) for r in old["rows"]] == [
        (r["key"], r["model_sha256"]) for r in new["rows"]
    ]
