"""benchmarks/study.py and run_cpu.py (`make bench`): one run with the members' rows, measured GEMM peaks,
the agreement column and the chart, the command run_cpu builds, and the README-ready summary it writes."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from cxr.bench.report import load_report
from tests.onnx_factory import make_member_model, write_gray_pngs
from tests.test_bench_support import benchmark, variant_of, with_card

study = benchmark("study")
run_cpu = benchmark("run_cpu")
FAST = ["--warmup", "1", "--iterations", "2", "-t", "1", "-q"]


@pytest.fixture(scope="module")
def paper(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stand-in for runs/paper: the fused model, its INT8 variant, its members, real-looking images."""
    tmp = tmp_path_factory.mktemp("paper")
    (tmp / "fused").mkdir()
    fused = with_card(fused_model, tmp / "fused" / "ensemble.onnx")
    variant_of(fused, tmp / "fused" / "ensemble.int8.onnx")
    base = make_member_model(tmp / "base.onnx")
    for i, name in enumerate(("alpha", "beta")):
        with_card(base, tmp / "onnx" / f"{name}.onnx", name=name, seed=i)
    base.unlink()
    write_gray_pngs(tmp / "imgs", 6)
    return tmp


def test_one_study_run_has_every_kind_of_row(paper: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fused = paper / "fused" / "ensemble.onnx"
    out = tmp_path / "bench"
    args = ["-m", str(fused), "--variant", str(fused.with_name("ensemble.int8.onnx")), "-b", "1,2", *FAST]
    args += ["--member-models", str(paper / "onnx"), "--agreement-folder", str(paper / "imgs")]
    args += ["--agreement-images", "4", "--peak-size", "32", "--peak-gflops", "int8=900"]
    args += ["-o", str(out / "cpu.json"), "--markdown", str(out / "cpu.md"), "--plot", str(out / "cpu.png")]
    assert study.main(args) == 0
    report = load_report(out / "cpu.json")
    kinds = [(r.kind, r.precision, r.batch_size) for r in report.rows]
    assert kinds == [
        ("inference", "fp32", 1),
        ("inference", "fp32", 2),
        ("inference", "int8", 1),
        ("inference", "int8", 2),
        ("members_separate", "fp32", 1),
        ("members_separate", "fp32", 2),
    ]
    int8 = report.rows[2]
    assert int8.agreement == {"top1": 1.0, "images": 4, "reference": "ensemble.onnx fp32 on onnxruntime cpu"}
    assert report.rows[0].agreement is None
    figs = report.machine.extra["peak_figures"]
    assert figs["int8"]["source"] == "option" and report.machine.peaks["int8"] == 900.0
    assert (
        figs["fp32"]["source"] == "measured"
        and figs["fp32"]["size"] == 32
        and report.machine.peaks["fp32"] > 0
    )
    assert all(r.efficiency_pct is not None for r in report.rows)
    assert report.config["study"]["member_models"] == [str(paper / "onnx")]
    assert (out / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = run_cpu.summary_markdown(out)
    assert "- GEMM peaks (measured at the start of the run unless given): FP32 " in summary
    assert "INT8 900 GFLOP/s (option)" in summary and "benchmarks/study.py" in summary
    assert summary.count("| ensemble.onnx |") == 4 and "100.0 (4)" in summary  # the INT8 rows agree


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--torch-run", "nowhere"], "--torch-run nowhere is not a folder"),
        (["--member-models", "nowhere"], "member path nowhere does not exist"),
        (["-b", "0"], "every batch size must be >= 1"),
        (["--nncf-peer"], "need --member-models"),
        (["--isa-cap", "avx3"], "unknown --isa-cap 'avx3'"),
    ],
)
def test_bad_study_input_fails_before_measuring(
    paper: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert study.main(["-m", str(paper / "fused" / "ensemble.onnx"), *FAST, *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "p50" not in captured.out


def test_plot_without_matplotlib_fails_before_measuring(
    paper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(study.plot, "matplotlib_missing", lambda: True)
    assert study.main(["-m", str(paper / "fused" / "ensemble.onnx"), "--plot", str(tmp_path / "p.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("quick", [False, True])
def test_run_cpu_builds_a_command_study_accepts(paper: Path, tmp_path: Path, quick: bool) -> None:
    """`make bench`'s one command line: study.py with every row the published table has."""
    a = run_cpu.parse_args(["--quick"] if quick else ["--agreement-folder", str(paper / "imgs")])
    models = run_cpu.Models(
        paper / "fused" / "ensemble.onnx",
        paper / "fused" / "ensemble.int8.onnx",
        paper / "onnx",
        paper,
    )
    cmd = run_cpu.bench_command(models, a, tmp_path)
    assert Path(cmd[1]).name == "study.py"
    parsed: argparse.Namespace = study.parse_args(cmd[2:])
    assert parsed.member_models == [paper / "onnx"] and parsed.torch_run == paper
    assert parsed.plot == tmp_path / "cpu.png" and parsed.output == tmp_path / "cpu.json"
    assert (parsed.batch_sizes, parsed.peak_size) == (
        ("1", 512) if quick else ("1,8", study.peak.DEFAULT_SIZE)
    )
    openvino = importlib.util.find_spec("openvino") is not None
    assert parsed.isa_cap == ("AVX2" if openvino else None)
    assert parsed.nncf_peer == (openvino and importlib.util.find_spec("nncf") is not None)
    no_cap = run_cpu.bench_command(
        models, run_cpu.parse_args(["--isa-cap", "none", "--no-nncf-peer"]), tmp_path
    )
    assert "--isa-cap" not in no_cap and "--nncf-peer" not in no_cap


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_a_capped_study_merges_the_avx2_rows_into_one_report(paper: Path, tmp_path: Path) -> None:
    """--isa-cap: the OpenVINO rows again in a child with ONEDNN_MAX_CPU_ISA=AVX2, named and peaked apart."""
    fused = paper / "fused" / "ensemble.onnx"
    args = ["-m", str(fused), "-p", "openvino", "--precision", "fp32", *FAST, "--peak-size", "32"]
    args += ["--member-models", str(paper / "onnx"), "--no-separate-members", "--openvino-peer"]
    args += ["--isa-cap", "avx2", "-o", str(tmp_path / "cpu.json")]
    assert study.main(args) == 0
    report = load_report(tmp_path / "cpu.json")
    assert [(r.model, r.kind, r.precision) for r in report.rows] == [
        ("ensemble.onnx", "inference", "fp32"),
        ("ensemble.onnx", "peer_openvino_defaults", report.rows[1].precision),  # bf16 where the CPU has it
        ("ensemble.onnx [AVX2]", "inference", "fp32"),
        ("ensemble.onnx [AVX2]", "peer_openvino_defaults", "fp32"),  # no BF16 under the cap: f32 defaults
    ]
    assert all(any("capped to AVX2" in w for w in r.warnings) for r in report.rows[2:])
    assert not any("capped" in w for r in report.rows[:2] for w in r.warnings)
    capped = report.machine.extra["peak_figures_capped"]
    assert capped["cap"] == "AVX2" and capped["figures"]["fp32"]["runtime"] == "openvino"
    assert (
        capped["figures"]["bf16"]["gflops"] is None
        and "leaves no BF16" in capped["figures"]["bf16"]["reason"]
    )
    assert "Capped to AVX2 (OpenVINO only): FP32 " in run_cpu.summary_markdown(tmp_path)


def test_summary_of_a_report_without_measured_peaks(paper: Path, tmp_path: Path) -> None:
    fused = paper / "fused" / "ensemble.onnx"
    args = [
        "-m",
        str(fused),
        *FAST,
        "--peak-gflops",
        "fp32=200",
        "--no-measure-peak",
        "-o",
        str(tmp_path / "a.json"),
    ]
    assert study.main(args) == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["machine"]["peaks"] == {"fp32": 200.0} and doc["machine"]["peak_source"] == "option"
    assert "FP32 200 GFLOP/s (option)" in run_cpu.summary_markdown(tmp_path)
