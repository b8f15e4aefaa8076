"""cxr-bench's precision axis: which (provider, precision) pairs run, the precision column is what really
ran (SessionInfo.precision, else the file's), efficiency divides by that precision's peak, OpenVINO BF16
refusals are notes (errors when strict)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from typer.testing import CliRunner

from cxr.bench import run as bench_run
from cxr.bench.config import provider_precisions
from cxr.bench.measure import effective_precision
from cxr.bench.report import format_markdown, format_terminal
from cxr.bench.run import BenchConfig, run_bench
from cxr.cli.bench import app
from cxr.errors import ConfigError, ProviderError
from cxr.openvino_session import BF16_RECORD, META_VERIFIED_PRECISIONS
from cxr.session import SessionConfig
from tests.test_bench_support import variant_of

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
FAST: dict[str, Any] = {"warmup": 1, "iterations": 3, "threads": (1,)}
PEAKS = "fp32=100,bf16=400,int8=800"
ACCEPTED = {"accepted": True, "agreement": 1.0, "images": 50, "bar": 0.99, "reason": "test record"}


def _cpu_bf16() -> bool:
    if not HAS_OPENVINO:
        return False
    import openvino as ov

    from cxr.openvino_session import cpu_has_bf16

    return cpu_has_bf16(ov.Core())


def with_bf16_record(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_VERIFIED_PRECISIONS, json.dumps({BF16_RECORD: ACCEPTED})
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize(
    ("providers", "precisions", "runs", "skipped"),
    [
        (("cpu",), ("auto",), (("cpu", "auto"),), 0),
        (("cpu",), ("auto", "fp32"), (("cpu", "auto"), ("cpu", "fp32")), 0),  # auto may pick a verified INT8
        (
            ("openvino",),
            ("auto", "fp32", "bf16"),
            (("openvino", "auto"), ("openvino", "fp32"), ("openvino", "bf16")),
            0,
        ),
        (
            ("cpu", "openvino"),
            ("fp32", "bf16"),
            (("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")),
            1,
        ),
        (  # int8 is its own run on both CPU providers; a GPU provider cannot run it
            ("cpu", "openvino", "cuda"),
            ("auto", "int8"),
            (("cpu", "auto"), ("cpu", "int8"), ("openvino", "auto"), ("openvino", "int8"), ("cuda", "auto")),
            1,
        ),
    ],
)
def test_provider_precision_pairs(
    providers: tuple[str, ...], precisions: tuple[str, ...], runs: tuple[tuple[str, str], ...], skipped: int
) -> None:
    got, notes = provider_precisions(providers, precisions)
    assert got == runs and len(notes) == skipped
    assert all("skipped cpu bf16" in n or "skipped cuda int8" in n for n in notes)


@pytest.mark.parametrize(
    ("providers", "precisions", "match"),
    [
        (("cpu",), ("bf16",), "no provider asked for can run precision 'bf16'"),
        (("cuda", "tensorrt"), ("bf16",), "no provider asked for can run precision 'bf16'"),
        (("openvino", "cpu"), ("bf16",), "provider 'cpu' can run none of the precisions bf16"),
    ],
)
def test_pairs_nothing_can_run_are_refused(
    providers: tuple[str, ...], precisions: tuple[str, ...], match: str, fused_model: Path
) -> None:
    with pytest.raises(ConfigError, match=match):
        BenchConfig(model=fused_model, providers=providers, precisions=precisions)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "cpu", "--precision", "bf16"], "cannot run precision 'bf16'"),
        (["-p", "cpu,cuda", "--precision", "bf16"], "bf16 runs on --provider openvino only"),
        (["--precision", "fp64"], "give each of auto, fp32, bf16, int8 at most once"),
        (["-p", "cuda", "--precision", "int8"], "int8 on openvino and cpu"),
        (["--precision", "fp32,fp32"], "at most once"),
    ],
)
def test_cli_refuses_invalid_pairs_with_exit_2(fused_model: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["run", "-m", str(fused_model), "-n", "1", "-q", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("file", "session", "ran"),
    [("fp32", None, "fp32"), ("int8", None, "int8"), ("fp32", "bf16", "bf16"), ("int8", "bf16", "int8")],
)
def test_effective_precision(file: str, session: str | None, ran: str) -> None:
    assert effective_precision(file, session) == ran


def test_the_precision_column_is_what_the_session_ran(
    fused_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that says it runs bf16 makes a bf16 row, whose efficiency divides by the BF16 peak."""
    real = bench_run.open_predictor

    def bf16_session(*args: Any, **kwargs: Any) -> Any:
        predictor, seconds = real(*args, **kwargs)
        predictor.info = dataclasses.replace(predictor.info, precision="bf16")
        return predictor, seconds

    monkeypatch.setattr(bench_run, "open_predictor", bf16_session)
    report = run_bench(BenchConfig(model=fused_model, peak_gflops=PEAKS, **FAST))
    (row,) = report.rows
    assert (row.precision, row.precision_requested, row.peak_gflops) == ("bf16", "auto", 400.0)
    assert row.gflops is not None and row.efficiency_pct == pytest.approx(100 * row.gflops / 400.0)


@needs_openvino
def test_openvino_rows_carry_the_compiled_precision(fused_model: Path, tmp_path: Path) -> None:
    int8 = variant_of(fused_model, tmp_path / "tiny.int8.onnx")
    cfg = BenchConfig(
        model=fused_model,
        variants=(int8,),
        providers=("cpu", "openvino"),
        precisions=("auto",),
        peak_gflops=PEAKS,
        **FAST,
    )
    auto = run_bench(cfg).rows
    fp32 = run_bench(dataclasses.replace(cfg, providers=("openvino",), precisions=("fp32",))).rows
    got = [(r.model, r.provider, r.precision, r.precision_requested, r.peak_gflops) for r in (*auto, *fp32)]
    assert got == [
        ("tiny_fused.onnx", "cpu", "fp32", "auto", 100.0),
        ("tiny_fused.onnx", "openvino", "fp32", "auto", 100.0),  # no BF16 record: auto -> fp32
        ("tiny.int8.onnx", "cpu", "int8", "auto", 800.0),
        ("tiny.int8.onnx", "openvino", "int8", "auto", 800.0),  # an INT8 file stays int8
        ("tiny_fused.onnx", "openvino", "fp32", "fp32", 100.0),
        ("tiny.int8.onnx", "openvino", "int8", "fp32", 800.0),
    ]
    assert auto[1].label() == "tiny_fused.onnx fp32 (auto)"
    assert any("auto -> fp32" in w for w in auto[1].warnings)
    assert fp32[1].label() == "tiny.int8.onnx int8 (fp32 float ops)"
    assert auto[1].key() != fp32[0].key()  # auto and fp32 stay apart in compare


@needs_openvino
def test_an_auto_run_that_repeats_an_asked_precision_is_measured_once(fused_model: Path) -> None:
    cfg = BenchConfig(model=fused_model, providers=("openvino",), precisions=("auto", "fp32"), **FAST)
    report = run_bench(cfg)
    assert [(r.precision, r.precision_requested) for r in report.rows] == [("fp32", "fp32")]
    assert any("precision auto -> fp32" in n and "measured once" in n for n in report.notes)


@needs_openvino
@pytest.mark.parametrize("strict", [False, True])
def test_bf16_without_a_record_is_skipped_or_refused(fused_model: Path, strict: bool) -> None:
    cfg = BenchConfig(
        model=fused_model,
        providers=("openvino",),
        precisions=("fp32", "bf16"),
        session=SessionConfig(strict_provider=strict),
        **FAST,
    )
    if strict:
        with pytest.raises(ProviderError, match="bf16"):
            run_bench(cfg)
        return
    report = run_bench(cfg)
    assert [r.precision_requested for r in report.rows] == ["fp32"]
    assert any("skipped openvino bf16 for tiny_fused.onnx" in n for n in report.notes)


@pytest.mark.parametrize(
    ("kind", "cap", "rows", "note"),
    [
        ("avx2", None, [("fused.int8.onnx", "int8", "int8")], "auto -> int8 for fused.onnx"),
        ("amx", None, [("fused.onnx", "fp32", "auto")], "skipped cpu int8 for fused.onnx"),
        ("amx", "AVX2", [("fused.onnx", "fp32", "auto")], "kind 'amx'"),  # onnxruntime ignores the cap
    ],
)
def test_int8_rows_run_the_verified_file_and_say_the_cpu_kind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    cap: str | None,
    rows: list[tuple[str, str, str]],
    note: str,
) -> None:
    from tests.test_runtime_int8 import FLAGS, OK, make_pair

    monkeypatch.setattr("cxr.cpu_kind.cpu_flags", lambda *a: frozenset(FLAGS[kind]))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK})
    cfg = BenchConfig(model=fp32, providers=("cpu",), precisions=("auto", "int8"), peak_gflops=PEAKS, **FAST)
    report = run_bench(cfg)
    assert [(r.model, r.precision, r.precision_requested) for r in report.rows] == rows
    assert [(r.cpu_kind, r.isa_cap) for r in report.rows] == [(kind, cap)]
    line = f"CPU kind: cpu as {kind}" + (f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else "")
    assert line in format_terminal(report) and line in format_markdown(report)
    assert any(note in n for n in report.notes), report.notes
    assert (
        report.rows[0]
        .key()
        .endswith(f"|isa-{cap}" if cap else "|c1|session" + ("|asked-int8" if kind == "avx2" else ""))
    )


@pytest.mark.parametrize("kind", ["avx2", "amx"])
def test_provider_auto_int8_rows_run_where_verified_and_are_notes_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from tests.test_runtime_int8 import FLAGS, OK, make_pair

    monkeypatch.setattr("cxr.cpu_kind.cpu_flags", lambda *a: frozenset(FLAGS[kind]))
    monkeypatch.setattr("cxr.session.available_providers", lambda: ("cpu",))  # a host without a GPU
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    fp32 = make_pair(tmp_path, ov={"avx2": OK}, ort={"avx2": OK})
    cfg = BenchConfig(model=fp32, providers=("auto",), precisions=("auto", "int8"), **FAST)
    report = run_bench(cfg)
    want = "openvino" if HAS_OPENVINO else "cpu"
    if kind == "avx2":
        assert [(r.model, r.precision, r.provider) for r in report.rows] == [
            ("fused.int8.onnx", "int8", want)
        ]
        assert any("measured once" in n for n in report.notes)
    else:
        assert [(r.model, r.precision, r.provider) for r in report.rows] == [("fused.onnx", "fp32", "cpu")]
        assert any("skipped auto int8 for fused.onnx" in n and "kind 'amx'" in n for n in report.notes)
