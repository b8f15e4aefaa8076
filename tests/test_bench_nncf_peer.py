"""benchmarks/nncf_peer.py: the members quantized by hand with NNCF's defaults (the peer an engineer makes
without cxr): calibration images without the agreement images, the cache beside the member checked by hash,
and (slow) a real build whose IR runs INT8 in OpenVINO, then its peer rows with their agreement."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from cxr.bench.inputs import inspect_model
from cxr.bench.run import BenchConfig, run_bench
from cxr.errors import ConfigError
from cxr.labels import CLASSES
from tests.onnx_factory import write_gray_pngs
from tests.test_bench_support import benchmark, with_card

nncf_peer = benchmark("nncf_peer")
references = benchmark("references")
HAS_NNCF = importlib.util.find_spec("nncf") is not None and importlib.util.find_spec("openvino") is not None


def test_calibration_leaves_the_agreement_images_out(tmp_path: Path) -> None:
    files = write_gray_pngs(tmp_path / "imgs", 8)
    cal = nncf_peer.Calibration.from_folder(tmp_path / "imgs", files[:3])
    assert sorted(cal.files) == sorted(files[3:])
    assert cal.files == nncf_peer.Calibration.from_folder(tmp_path / "imgs", files[:3]).files  # seeded
    assert "5 of 5 real images" in cal.described and "3 agreement images left out" in cal.described
    assert nncf_peer.Calibration.from_folder(None).files == ()
    with pytest.raises(ConfigError, match="no calibration images left"):
        nncf_peer.Calibration.from_folder(tmp_path / "imgs", files)


def test_the_cache_is_used_only_for_the_same_member(member_model: Path, tmp_path: Path) -> None:
    member = inspect_model(with_card(member_model, tmp_path / "m" / "alpha.onnx", name="alpha"))
    xml = nncf_peer.peer_path(member)
    assert xml == tmp_path / "m" / "alpha.nncf-peer.xml" and nncf_peer.cached(member) is None
    xml.write_text("<net/>")
    xml.with_suffix(".bin").write_bytes(b"")
    record = xml.with_suffix(".json")
    doc = {"source_sha256": member.sha256, "calibration": nncf_peer.Calibration().described}
    record.write_text(json.dumps(doc))
    assert nncf_peer.cached(member) == doc == nncf_peer.cached(member, nncf_peer.Calibration())
    other = nncf_peer.Calibration((xml,), "1 of 1 real images of elsewhere")
    assert nncf_peer.cached(member, other) is None  # calibrated on other images: rebuilt
    record.write_text(json.dumps({"source_sha256": "0" * 64}))  # built from another file: stale
    assert nncf_peer.cached(member) is None


def _two_members(member_model: Path, tmp_path: Path) -> list[Path]:
    return [
        with_card(member_model, tmp_path / "m" / f"{n}.onnx", name=n, seed=i)
        for i, n in enumerate(("alpha", "beta"))
    ]


GRAYS = tuple(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(11))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_member_agreement_counts_each_members_top1_against_its_fp32_file(
    fused_model: Path, member_model: Path, tmp_path: Path
) -> None:
    import openvino as ov

    _two_members(member_model, tmp_path)
    members = references.resolve_members(inspect_model(fused_model), [tmp_path / "m"])
    agree = references.MemberAgreement(members, GRAYS)
    core = ov.Core()
    same = [core.compile_model(str(m.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}) for m in members]
    got = agree.of(same)
    assert got["top1"] == 1.0 and got["images"] == len(GRAYS) and set(got["members"]) == {"alpha", "beta"}

    def always_class_0(x: np.ndarray) -> list[np.ndarray]:
        return [np.tile(np.arange(len(CLASSES), 0, -1, dtype=np.float32), (len(x), 1))]

    reference = agree.reference()
    got = agree.of([always_class_0, same[1]])
    assert got["members"] == {"alpha": float(np.mean(reference[0] == 0)), "beta": 1.0}
    assert got["top1"] == min(got["members"].values())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_NNCF, reason="needs nncf and openvino")
def test_a_built_peer_runs_int8_in_openvino_and_its_rows_carry_agreement(
    fused_model: Path, member_model: Path, tmp_path: Path
) -> None:
    import openvino as ov

    _two_members(member_model, tmp_path)
    members = references.resolve_members(inspect_model(fused_model), [tmp_path / "m"])
    notes: list[str] = []
    files = nncf_peer.peer_files(members, nncf_peer.Calibration(), notes)
    assert "random pixels" in notes[0] and "built now" in notes[0]
    assert files == tuple(tmp_path / "m" / f"{n}.nncf-peer.xml" for n in ("alpha", "beta"))
    compiled = ov.Core().compile_model(str(files[0]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ran = {
        str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in compiled.get_runtime_model().get_ops()
    }
    assert ran & {"u8", "i8"}, ran  # quantized, not a float copy
    assert all(nncf_peer.cached(m) is not None for m in members)
    nncf_peer.peer_files(members, nncf_peer.Calibration(), notes)
    assert "cached files reused" in notes[1]

    peer = references.Peer(files, model="members.nncf-peer", precision="int8")
    cfg = BenchConfig(
        model=fused_model, batch_sizes=(1, 2), warmup=1, iterations=2, threads=(1,), peak_gflops=100.0
    )
    agree = references.MemberAgreement(members, GRAYS)
    report = run_bench(cfg, references=[references.peer_reference(members, peer, agree)])
    rows = [r for r in report.rows if r.model == "members.nncf-peer"]
    assert [r.batch_size for r in rows] == [1, 2]
    assert all(r.precision == "int8" and r.provider == "openvino" and r.agreement for r in rows)
    a = rows[0].agreement
    assert a is not None and a["images"] == len(GRAYS) and set(a["members"]) == {"alpha", "beta"}
