"""The study's ONNX reference rows (benchmarks/references.py): the ensemble's member files found and checked,
the members as separate sessions, and the members in OpenVINO with its defaults (the peer)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cxr.bench.inputs import inspect_model
from cxr.bench.run import BenchConfig, run_bench
from cxr.errors import ConfigError, DataError, ModelError
from cxr.session import file_sha256
from tests.onnx_factory import make_fused_model, make_member_model
from tests.test_bench_support import benchmark, with_card

references = benchmark("references")
PEER_KIND = references.PEER_KIND
FAST = {"warmup": 1, "iterations": 3, "threads": (1,), "peak_gflops": 100.0}
MEMBER_FLOPS = 2 * 32 * 32 * 4  # make_member_model's card


def _members(tmp_path: Path, names: tuple[str, ...] = ("alpha", "beta")) -> list[Path]:
    base = make_member_model(tmp_path / "base_member.onnx")
    out = []
    for i, n in enumerate(names):
        out.append(with_card(base, tmp_path / "members" / f"{n}.onnx", name=n, seed=i))
    base.unlink()
    return out


def test_resolve_members_from_folder_in_ensemble_order(fused_model: Path, tmp_path: Path) -> None:
    beta, alpha = reversed(_members(tmp_path))
    (tmp_path / "members" / "junk.onnx").write_bytes(b"nope")  # skipped in a folder
    got = references.resolve_members(inspect_model(fused_model), [tmp_path / "members"])
    assert [m.path for m in got] == [alpha, beta]


def test_resolve_members_checks_recorded_hashes(tmp_path: Path) -> None:
    alpha, beta = _members(tmp_path)
    fused = make_fused_model(tmp_path / "fused.onnx")
    good = with_card(
        fused,
        tmp_path / "fused_h.onnx",
        members=[
            {"name": "alpha", "onnx_sha256": file_sha256(alpha)},
            {"name": "beta", "onnx_sha256": "0" * 64},
        ],
    )
    with pytest.raises(ModelError, match="hash mismatch"):
        references.resolve_members(inspect_model(good), [alpha, beta])
    with pytest.raises(ModelError, match="beta"):  # in a folder the wrong beta is skipped, so beta is missing
        references.resolve_members(inspect_model(good), [tmp_path / "members"])


def test_resolve_members_refuses_strangers(fused_model: Path, member_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a member"):
        references.resolve_members(inspect_model(fused_model), [member_model])  # card name 'tiny'
    with pytest.raises(ConfigError, match="single member"):
        references.resolve_members(inspect_model(member_model), [member_model])
    with pytest.raises(DataError):
        references.resolve_members(inspect_model(fused_model), [tmp_path / "nowhere"])


@pytest.mark.parametrize("batches", [(1,), (1, 3)])
def test_members_rows_use_the_sum_of_member_flops(
    fused_model: Path, tmp_path: Path, batches: tuple[int, ...]
) -> None:
    members = references.resolve_members(
        inspect_model(fused_model), [p.parent for p in _members(tmp_path)[:1]]
    )
    cfg = BenchConfig(model=fused_model, batch_sizes=batches, **FAST)
    report = run_bench(cfg, references=[references.members_reference(members)])
    rows = [r for r in report.rows if r.kind == "members_separate"]
    assert [r.batch_size for r in rows] == list(batches)
    assert all(r.flops_per_image == 2 * MEMBER_FLOPS and r.sessions == 2 for r in rows)
    assert all(r.label().endswith("members") and r.efficiency_pct is not None for r in rows)
    assert [r.kind for r in report.rows[: len(batches)]] == ["inference"] * len(
        batches
    )  # the model's own first


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_peer_rows(fused_model: Path, tmp_path: Path) -> None:
    members = references.resolve_members(
        inspect_model(fused_model), [p.parent for p in _members(tmp_path)[:1]]
    )
    cfg = BenchConfig(model=fused_model, batch_sizes=(1, 2), **FAST)
    rows = [
        r for r in run_bench(cfg, references=[references.peer_reference(members)]).rows if r.kind == PEER_KIND
    ]
    assert [r.batch_size for r in rows] == [1, 2]
    assert all(r.provider == "openvino" and r.flops_per_image == 2 * MEMBER_FLOPS for r in rows)
    assert all(r.precision in ("fp32", "bf16") and r.latency_ms.p50 > 0 for r in rows)
    assert all(any("not checked against FP32" in w for w in r.warnings) for r in rows)


def test_without_openvino_the_peer_is_a_note(
    fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise references.ProviderError("openvino is not installed", hint="pip install openvino")

    monkeypatch.setattr(references, "import_openvino", missing)
    members = references.resolve_members(
        inspect_model(fused_model), [p.parent for p in _members(tmp_path)[:1]]
    )
    report = run_bench(
        BenchConfig(model=fused_model, **FAST), references=[references.peer_reference(members)]
    )
    assert [r.kind for r in report.rows] == ["inference"]
    assert any("no OpenVINO-defaults peer row" in n for n in report.notes)
