"""The PyTorch eager reference row, with a stand-in for the checkpoint loader of cxr.train.torch_reference."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from cxr.bench.run import BenchConfig, run_bench
from cxr.spec import PreprocessSpec

torch = pytest.importorskip("torch")


def _fake_load_checkpoint(loaded: list[Path]) -> Any:
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
    from cxr.train import torch_reference

    monkeypatch.setattr(torch_reference, "load_checkpoint", _fake_load_checkpoint(loaded))
    threads_before = torch.get_num_threads()
    report = run_bench(
        BenchConfig(
            model=fused_model,
            batch_sizes=(1, 2),
            threads=(1,),
            torch_run=tmp_path,
            warmup=1,
            iterations=3,
            peak_gflops=10.0,
        )
    )
    assert loaded == [tmp_path / "members" / "alpha", tmp_path / "members" / "beta"]
    rows = [r for r in report.rows if r.kind == "torch_eager"]
    assert [(r.batch_size, r.threads, r.provider, r.sessions) for r in rows] == [
        (1, 1, "cpu", 2),
        (2, 1, "cpu", 2),
    ]
    assert all(
        r.latency_ms.count == 3 and r.throughput_ips > 0 and r.efficiency_pct is not None for r in rows
    )
    assert any("torch" in w for w in rows[0].warnings)
    assert torch.get_num_threads() == threads_before  # restored after the reference ran


def test_missing_checkpoints_are_a_note(fused_model: Path, tmp_path: Path) -> None:
    (tmp_path / "members" / "alpha").mkdir(parents=True)
    report = run_bench(BenchConfig(model=fused_model, torch_run=tmp_path, warmup=0, iterations=1))
    assert [r.kind for r in report.rows] == ["inference"]
    assert any("no checkpoint for beta" in n for n in report.notes)
