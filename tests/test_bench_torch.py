"""benchmarks/torch_rows.py: the PyTorch eager and "PyTorch best" rows, with a stand-in for the checkpoint
loader of benchmarks/torch_reference.py."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr.bench.run import BenchConfig, run_bench
from cxr.spec import PreprocessSpec
from tests.test_bench_support import benchmark

torch_rows = benchmark("torch_rows")


def _fake_load_checkpoint(loaded: list[Path]) -> Any:
    torch = pytest.importorskip("torch")

    def load_checkpoint(path: Path) -> Any:
        loaded.append(Path(path))
        gen = torch.Generator().manual_seed(len(loaded))
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        info = types.SimpleNamespace(preprocess=PreprocessSpec.square(32), name=Path(path).name)
        return types.SimpleNamespace(model=model.train(), info=info)

    return load_checkpoint


@pytest.mark.slow
def test_torch_eager_rows(fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / "members" / name).mkdir(parents=True)
    loaded: list[Path] = []
    torch_reference = benchmark("torch_reference")

    monkeypatch.setattr(torch_reference, "load_checkpoint", _fake_load_checkpoint(loaded))
    threads_before = torch_reference.torch.get_num_threads()
    cfg = BenchConfig(
        model=fused_model,
        batch_sizes=(1, 2),
        threads=(1,),
        warmup=1,
        iterations=3,
        peak_gflops="fp32=10,bf16=40",
    )
    report = run_bench(cfg, references=[torch_rows.torch_reference(tmp_path)])
    assert loaded == [tmp_path / "members" / "alpha", tmp_path / "members" / "beta"]
    rows = [r for r in report.rows if r.kind == "torch_eager"]
    best = "bf16" if torch_rows.best_mode().bf16 else "fp32"
    assert [(r.mode, r.precision, r.batch_size, r.threads, r.provider, r.sessions) for r in rows] == [
        ("eager", "fp32", 1, 1, "cpu", 2),
        ("eager", "fp32", 2, 1, "cpu", 2),
        ("best", best, 1, 1, "cpu", 2),
        ("best", best, 2, 1, "cpu", 2),
    ]
    assert rows[2].label().endswith("torch best") and "channels_last" in rows[2].warnings[0]
    assert all(
        r.latency_ms.count == 3 and r.throughput_ips > 0 and r.efficiency_pct is not None for r in rows
    )
    assert any("torch" in w for w in rows[0].warnings)
    assert torch_reference.torch.get_num_threads() == threads_before  # restored after the reference ran


def test_missing_checkpoints_are_a_note(fused_model: Path, tmp_path: Path) -> None:
    (tmp_path / "members" / "alpha").mkdir(parents=True)
    pytest.importorskip("torch")
    cfg = BenchConfig(model=fused_model, warmup=0, iterations=1)
    report = run_bench(cfg, references=[torch_rows.torch_reference(tmp_path)])
    assert [r.kind for r in report.rows] == ["inference"]
    assert any("no checkpoint for beta" in n for n in report.notes)


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu avx2 amx_tile amx_bf16\n", True),
        ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", False),
        ("model name\t: avx512_bf16 in a name is not a flag\n", False),
        ("", False),
    ],
)
def test_bf16_needs_the_cpu_flag(cpuinfo: str, native: bool) -> None:
    assert torch_rows.cpu_flags_bf16(cpuinfo) is native


@pytest.mark.parametrize("bf16", [True, False])
def test_best_rows_use_their_precisions_peak_and_report_agreement(
    fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    torch_reference = benchmark("torch_reference")

    for name in ("alpha", "beta"):
        (tmp_path / "members" / name).mkdir(parents=True)
    monkeypatch.setattr(torch_reference, "load_checkpoint", _fake_load_checkpoint([]))
    monkeypatch.setattr(torch_rows, "best_mode", lambda: torch_rows.BestMode(bf16, "PyTorch best: test"))
    grays = [np.full((32, 32), 20 * i, np.uint8) for i in range(5)]
    cfg = BenchConfig(model=fused_model, threads=(1,), warmup=0, iterations=2, peak_gflops="fp32=10,bf16=40")
    rows = run_bench(cfg, references=[torch_rows.torch_reference(tmp_path, grays)]).rows
    eager, best = (r for r in rows if r.kind == "torch_eager")
    assert (eager.mode, eager.precision, eager.peak_gflops, eager.agreement) == ("eager", "fp32", 10.0, None)
    assert (best.mode, best.precision) == ("best", "bf16" if bf16 else "fp32")
    assert best.peak_gflops == (40.0 if bf16 else 10.0)
    assert best.efficiency_pct == pytest.approx(100 * best.gflops / best.peak_gflops)  # type: ignore[operator]
    if bf16:
        assert best.agreement is not None and best.agreement["images"] == 5
        assert set(best.agreement["members"]) == {"alpha", "beta"}
        assert best.agreement["top1"] == min(best.agreement["members"].values())
    else:
        assert best.agreement is None  # channels_last FP32 reduces nothing


def test_no_torch_best(fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_reference = benchmark("torch_reference")

    for name in ("alpha", "beta"):
        (tmp_path / "members" / name).mkdir(parents=True)
    monkeypatch.setattr(torch_reference, "load_checkpoint", _fake_load_checkpoint([]))
    cfg = BenchConfig(model=fused_model, warmup=0, iterations=1)
    rows = run_bench(cfg, references=[torch_rows.torch_reference(tmp_path, best=False)]).rows
    assert [r.mode for r in rows if r.kind == "torch_eager"] == ["eager"]


def test_without_torch_the_reference_is_a_note(
    fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_rows, "torch_installed", lambda: False)
    report = run_bench(
        BenchConfig(model=fused_model, warmup=1, iterations=2),
        references=[torch_rows.torch_reference(tmp_path)],
    )
    assert [r.kind for r in report.rows] == ["inference"]
    assert any("torch is not installed" in n for n in report.notes)
