"""This host's GEMM peak: the hand-written ONNX GEMM graphs, positive figures per precision at tiny sizes,
which runtime won, the missing-OpenVINO path, the per-process cache, `python benchmarks/peak.py`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cxr.errors import ConfigError
from cxr.session import cpu_session
from tests.test_bench_support import benchmark

bench_peak = benchmark("peak")
gemm_model = benchmark("onnx_writer").gemm_model
PEAK_PRECISIONS, PeakFigure = bench_peak.PEAK_PRECISIONS, bench_peak.PeakFigure
best_seconds, measure_peaks = bench_peak.best_seconds, bench_peak.measure_peaks

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def _cpu_bf16() -> bool:
    if not HAS_OPENVINO:
        return False
    import openvino as ov

    from cxr.openvino_session import cpu_has_bf16

    return cpu_has_bf16(ov.Core())


@pytest.mark.parametrize("n", [1, 8, 33])
@pytest.mark.parametrize(
    ("op", "a_type", "b_type", "y_type"),
    [("MatMul", np.float32, np.float32, np.float32), ("MatMulInteger", np.uint8, np.int8, np.int32)],
)
def test_the_written_graph_is_valid_onnx_and_computes_the_product(
    n: int, op: str, a_type: type, b_type: type, y_type: type
) -> None:
    rng = np.random.default_rng(n)
    a = rng.integers(0, 100, (n, n + 1)).astype(a_type)
    b = rng.integers(-100, 100, (n + 1, n + 2)).astype(b_type)
    model = gemm_model(op, ("A", a_type, a.shape), b, ("Y", y_type, (n, n + 2)))
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    (y,) = cpu_session(model, 1).run(None, {"A": a})
    assert y.dtype == y_type
    np.testing.assert_allclose(y, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("size", [16, 48])
def test_peaks_are_positive_and_name_their_runtime(size: int) -> None:
    figs = measure_peaks(size=size, threads=1, repeats=2, fresh=True)
    assert tuple(figs) == PEAK_PRECISIONS
    for precision, fig in figs.items():
        assert fig.precision == precision and fig.size == size and fig.source == "measured"
        if fig.gflops is None:
            assert precision == "bf16" and not _cpu_bf16() and fig.reason
            continue
        assert fig.gflops > 0 and fig.runtime in fig.candidates
        assert fig.gflops == max(fig.candidates.values())
        assert fig.threads == (None if fig.runtime == "numpy" else 1)
    assert {"numpy", "onnxruntime"} <= set(figs["fp32"].candidates)
    assert "onnxruntime" in figs["int8"].candidates
    assert (figs["bf16"].gflops is not None) == _cpu_bf16()


def test_without_openvino_bf16_is_unknown_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        bench_peak.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name)
    )
    figs = measure_peaks(size=16, threads=1, repeats=1, fresh=True)
    assert figs["bf16"].gflops is None and "openvino: not installed" in str(figs["bf16"].reason)
    assert "openvino" not in figs["fp32"].candidates and figs["fp32"].gflops
    assert figs["bf16"].describe().startswith("BF16 unknown: openvino: not installed")


def test_peaks_are_measured_once_per_process_unless_fresh() -> None:
    first = measure_peaks(("fp32",), size=24, threads=1, repeats=1)
    assert measure_peaks(("fp32",), size=24, threads=1, repeats=1)["fp32"] is first["fp32"]
    assert measure_peaks(("fp32",), size=24, threads=1, repeats=1, fresh=True)["fp32"] is not first["fp32"]


def test_best_seconds_warms_up_and_stops_at_its_budget() -> None:
    calls: list[int] = []
    best = best_seconds(lambda: calls.append(1), repeats=1000, budget_s=0.0)
    assert len(calls) == 2 and best >= 0  # one warm-up, one timed call, then the budget is spent


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": 4}, "size"), ({"threads": 0}, "threads"), ({"repeats": 0}, "repeats")],
)
def test_bad_peak_settings_are_refused(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    settings = {"size": 16, "threads": 1, "repeats": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        measure_peaks(**settings)


def test_a_figure_round_trips() -> None:
    fig = PeakFigure(
        "int8", 700.5, "openvino", 2, 2048, "measured", {"onnxruntime": 600.0, "openvino": 700.5}
    )
    assert PeakFigure.from_dict(json.loads(json.dumps(fig.to_dict()))) == fig
    assert fig.describe() == "INT8 700 GFLOP/s (openvino, 2 threads, 2048^3)"


def test_the_script_prints_and_writes_every_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "peak.json"
    assert bench_peak.main(["--size", "32", "--repeats", "1", "-t", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and all(p in printed for p in PEAK_PRECISIONS)
    assert "--peak-gflops fp32=" in printed  # what to give cxr-bench run
    doc = json.loads(out.read_text())
    assert set(doc["peaks"]) == set(PEAK_PRECISIONS) and doc["peaks"]["fp32"]["gflops"] > 0
    assert doc["machine"]["cpu_model"]
