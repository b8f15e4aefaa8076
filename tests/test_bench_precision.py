"""cxr-bench's precision axis: which (provider, precision) pairs run, the precision column is what really
ran (SessionInfo.precision, else the file's), efficiency divides by that precision's peak, OpenVINO BF16
refusals are notes (errors when strict), top-1 agreement of reduced-precision rows on images."""

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
from cxr.bench.run import BenchConfig, run_bench
from cxr.cli.bench import app
from cxr.errors import ConfigError, ProviderError
from cxr.openvino_session import BF16_RECORD, META_VERIFIED_PRECISIONS
from tests.onnx_factory import write_gray_pngs
from tests.test_bench_support import variant_of

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
FAST: dict[str, Any] = {"warmup": 1, "iterations": 3, "peak_size": 32, "threads": (1,)}
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
        (("cpu",), ("auto", "fp32"), (("cpu", "auto"),), 0),  # one onnxruntime run: the file as stored
        (
            ("openvino",),
            ("auto", "fp32", "bf16"),
            (("openvino", "auto"), ("openvino", "fp32"), ("openvino", "bf16")),
            0,
        ),
        (
            ("cpu", "openvino"),
            ("fp32", "bf16"),
            (("cpu", "auto"), ("openvino", "fp32"), ("openvino", "bf16")),
            1,
        ),
    ],
)
def test_provider_precision_pairs(
    providers: tuple[str, ...], precisions: tuple[str, ...], runs: tuple[tuple[str, str], ...], skipped: int
) -> None:
    got, notes = provider_precisions(providers, precisions)
    assert got == runs and len(notes) == skipped
    assert all("skipped cpu bf16" in n for n in notes)


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
        (["--precision", "fp64"], "give each of auto, fp32, bf16 at most once"),
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
        strict_provider=strict,
        **FAST,
    )
    if strict:
        with pytest.raises(ProviderError, match="bf16"):
            run_bench(cfg)
        return
    report = run_bench(cfg)
    assert [r.precision_requested for r in report.rows] == ["fp32"]
    assert any("skipped openvino bf16 for tiny_fused.onnx" in n for n in report.notes)


@pytest.mark.skipif(not _cpu_bf16(), reason="needs openvino on a CPU with BF16")
def test_verified_bf16_runs_and_reports_its_agreement(fused_model: Path, tmp_path: Path) -> None:
    model = with_bf16_record(fused_model, tmp_path / "verified.onnx")
    write_gray_pngs(tmp_path / "imgs", 6)
    cfg = BenchConfig(
        model=model,
        providers=("openvino",),
        precisions=("auto", "bf16", "fp32"),
        agreement_folder=tmp_path / "imgs",
        agreement_images=5,
        peak_gflops=PEAKS,
        **FAST,
    )
    report = run_bench(cfg)
    rows = report.rows
    assert [(r.precision, r.precision_requested, r.peak_gflops) for r in rows] == [
        ("bf16", "bf16", 400.0),  # auto chose bf16 too: measured once, with a note
        ("fp32", "fp32", 100.0),
    ]
    assert any("auto -> bf16" in n for n in report.notes)
    assert rows[0].agreement is not None and rows[0].agreement["images"] == 5
    assert (
        0.0 <= rows[0].agreement["top1"] <= 1.0
        and "fp32 on onnxruntime cpu" in rows[0].agreement["reference"]
    )
    assert rows[1].agreement is None
    (auto,) = run_bench(dataclasses.replace(cfg, precisions=("auto",))).rows
    assert (auto.precision, auto.label()) == ("bf16", "verified.onnx bf16 (auto)")


def test_int8_rows_get_their_agreement_with_fp32(fused_model: Path, tmp_path: Path) -> None:
    int8 = variant_of(fused_model, tmp_path / "tiny.int8.onnx")  # the same graph: agreement is 100%
    write_gray_pngs(tmp_path / "imgs", 7)
    cfg = BenchConfig(
        model=fused_model, variants=(int8,), agreement_folder=tmp_path / "imgs", agreement_images=4, **FAST
    )
    fp32, q = run_bench(cfg).rows
    assert fp32.agreement is None
    assert q.agreement == {"top1": 1.0, "images": 4, "reference": "tiny_fused.onnx fp32 on onnxruntime cpu"}


def test_a_missing_agreement_folder_fails_before_measuring(fused_model: Path, tmp_path: Path) -> None:
    from cxr.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        run_bench(BenchConfig(model=fused_model, agreement_folder=tmp_path / "nope", **FAST))


@pytest.mark.parametrize(("n", "want"), [(3, [0, 3, 6]), (10, list(range(10))), (20, list(range(10)))])
def test_agreement_images_are_spread_over_the_folder(n: int, want: list[int]) -> None:
    from cxr.bench.precision import spread

    files = [Path(f"{i}.png") for i in range(10)]
    assert spread(files, n) == [files[i] for i in want]


@pytest.mark.parametrize("images", [1, 4, 5])
def test_top1_pads_a_fixed_batch(fused_model: Path, tmp_path: Path, images: int) -> None:
    """A graph that takes batch 2 only still gets every image checked (the last batch is padded)."""
    import numpy as np

    from cxr.bench.precision import top1
    from cxr.runtime import Predictor
    from tests.test_bench_support import fixed_batch

    grays = [np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8) for i in range(images)]
    fixed = Predictor.from_path(fixed_batch(fused_model, tmp_path / "b2.onnx", 2), provider="cpu")
    dynamic = Predictor.from_path(fused_model, provider="cpu")
    got = top1(fixed, grays, fixed_batch=2)
    assert got.shape == (images,) and np.array_equal(got, top1(dynamic, grays))
