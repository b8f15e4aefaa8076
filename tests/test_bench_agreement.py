"""benchmarks/agreement.py: top-1 agreement of reduced-precision rows with the FP32 file on real images
(the published tables' agree % column): INT8 files, verified OpenVINO BF16, images spread over a folder,
a fixed batch padded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxr.bench.inputs import inspect_model
from cxr.bench.run import BenchConfig, run_bench
from cxr.errors import DataError
from tests.onnx_factory import write_gray_pngs
from tests.test_bench_precision import FAST, PEAKS, _cpu_bf16, with_bf16_record
from tests.test_bench_support import benchmark, variant_of

agreement = benchmark("agreement")


def _agreed(cfg: BenchConfig, folder: Path, n: int) -> tuple:  # type: ignore[type-arg]
    """Run ``cfg`` and add the agreement on at most ``n`` images of ``folder``, as study.py does."""
    files = [inspect_model(p) for p in (cfg.model, *cfg.variants)]
    notes: list[str] = []
    report = agreement.add_agreement(run_bench(cfg), cfg, files, agreement.load_images(folder, n, notes))
    return report.rows, report.notes


@pytest.mark.skipif(not _cpu_bf16(), reason="needs openvino on a CPU with BF16")
def test_verified_bf16_runs_and_reports_its_agreement(fused_model: Path, tmp_path: Path) -> None:
    model = with_bf16_record(fused_model, tmp_path / "verified.onnx")
    write_gray_pngs(tmp_path / "imgs", 6)
    cfg = BenchConfig(
        model=model,
        providers=("openvino",),
        precisions=("auto", "bf16", "fp32"),
        peak_gflops=PEAKS,
        **FAST,
    )
    rows, notes = _agreed(cfg, tmp_path / "imgs", 5)
    assert [(r.precision, r.precision_requested, r.peak_gflops) for r in rows] == [
        ("bf16", "bf16", 400.0),  # auto chose bf16 too: measured once, with a note
        ("fp32", "fp32", 100.0),
    ]
    assert any("auto -> bf16" in n for n in notes)
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
    cfg = BenchConfig(model=fused_model, variants=(int8,), **FAST)
    (fp32, q), _ = _agreed(cfg, tmp_path / "imgs", 4)
    assert fp32.agreement is None
    assert q.agreement == {"top1": 1.0, "images": 4, "reference": "tiny_fused.onnx fp32 on onnxruntime cpu"}


def test_reference_rows_keep_the_agreement_they_measured(fused_model: Path, tmp_path: Path) -> None:
    """A peer's or PyTorch best's own check (worst member) is not wiped when the file rows get theirs."""
    write_gray_pngs(tmp_path / "imgs", 3)
    cfg = BenchConfig(model=fused_model, **FAST)
    report = run_bench(cfg)
    own = {"top1": 0.5, "images": 3, "reference": "each member's FP32 file (worst member)"}
    peer = dataclasses.replace(report.rows[0], kind="peer_openvino_defaults", precision="int8", agreement=own)
    report = dataclasses.replace(report, rows=(*report.rows, peer))
    grays = agreement.load_images(tmp_path / "imgs", 3, [])
    rows = agreement.add_agreement(report, cfg, [inspect_model(fused_model)], grays).rows
    assert rows[0].agreement is None and rows[-1].agreement == own


def test_without_an_fp32_file_there_is_no_reference(fused_model: Path, tmp_path: Path) -> None:
    int8 = variant_of(fused_model, tmp_path / "tiny.int8.onnx")
    write_gray_pngs(tmp_path / "imgs", 2)
    rows, notes = _agreed(BenchConfig(model=int8, **FAST), tmp_path / "imgs", 2)
    assert rows[0].agreement is None and any("none of the model files is FP32" in n for n in notes)


def test_a_missing_agreement_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        agreement.load_images(tmp_path / "nope", 5, [])


@pytest.mark.parametrize(("n", "want"), [(3, [0, 3, 6]), (10, list(range(10))), (20, list(range(10)))])
def test_agreement_images_are_spread_over_the_folder(n: int, want: list[int]) -> None:
    files = [Path(f"{i}.png") for i in range(10)]
    assert agreement.spread(files, n) == [files[i] for i in want]


@pytest.mark.parametrize("images", [1, 4, 5])
def test_top1_pads_a_fixed_batch(fused_model: Path, tmp_path: Path, images: int) -> None:
    """A graph that takes batch 2 only still gets every image checked (the last batch is padded)."""
    import numpy as np

    from cxr.runtime import Predictor
    from tests.test_bench_support import fixed_batch

    grays = [np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8) for i in range(images)]
    fixed = Predictor.from_path(fixed_batch(fused_model, tmp_path / "b2.onnx", 2), provider="cpu")
    dynamic = Predictor.from_path(fused_model, provider="cpu")
    got = agreement.top1(fixed, grays, fixed_batch=2)
    assert got.shape == (images,) and np.array_equal(got, agreement.top1(dynamic, grays))
