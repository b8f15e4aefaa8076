"""The OpenVINO-defaults peer rows: the members as a user runs them in OpenVINO without cxr (unverified)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino")

from cxr.bench.peers import KIND  # noqa: E402
from cxr.bench.run import BenchConfig, run_bench  # noqa: E402
from cxr.openvino_session import graph_name  # noqa: E402
from tests.onnx_factory import make_member_model  # noqa: E402
from tests.test_bench_support import with_card  # noqa: E402


@pytest.mark.parametrize("peer", [False, True])
def test_peer_rows_only_when_asked(fused_model: Path, tmp_path: Path, peer: bool) -> None:
    base = make_member_model(tmp_path / "base.onnx")
    for n in ("alpha", "beta"):
        with_card(base, tmp_path / "members" / f"{n}.onnx", name=n)
    cfg = BenchConfig(
        model=fused_model,
        batch_sizes=(1, 2),
        threads=(1,),
        members=(tmp_path / "members",),
        peak_gflops=100.0,
        warmup=1,
        iterations=3,
        openvino_peer=peer,
    )
    rows = [r for r in run_bench(cfg).rows if r.kind == KIND]
    if not peer:
        assert rows == []
        return
    assert [r.batch_size for r in rows] == [1, 2]
    member_flops = 2 * 32 * 32 * 4  # make_member_model's card, two members
    assert all(r.provider == "openvino" and r.flops_per_image == 2 * member_flops for r in rows)
    assert all(r.precision in ("fp32", "bf16") and r.latency_ms.p50 > 0 for r in rows)
    assert all(any("not checked against FP32" in w for w in r.warnings) for r in rows)


@pytest.mark.parametrize(
    "names, want",
    [({"meta/probabilities", "probabilities"}, "probabilities"), ({"x"}, "x"), ({"a/b", "a/bc"}, "a/b")],
)
def test_the_graph_declared_name_is_reported(names: set[str], want: str) -> None:
    assert graph_name(names) == want
