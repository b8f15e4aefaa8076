"""`cxr fuse` verifies OpenVINO BF16 on the run's real images and records the verdict the runtime obeys.

Takes a tiny two-member run (``tests.test_fuse.build_tiny_run``) and a hand-made graph whose two logits
differ by less than BF16 can resolve (so BF16 flips its top-1 on every image and must be refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cxr.errors import ProviderError  # noqa: E402
from cxr.fuse import FuseConfig, fuse, run_members  # noqa: E402
from cxr.fuse.precision_check import check_openvino_bf16, write_record  # noqa: E402
from cxr.openvino_session import BF16_RECORD, META_VERIFIED_PRECISIONS, cpu_has_bf16  # noqa: E402
from cxr.session import SessionConfig, cpu_session, create_session, file_sha256  # noqa: E402
from tests.test_fuse import build_tiny_run  # noqa: E402

CPU_BF16 = cpu_has_bf16(ov.Core())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("bf16") / "run", {"alpha": 32, "beta": 32})


def _props(path: Path) -> dict[str, str]:
    return dict(cpu_session(str(path)).get_modelmeta().custom_metadata_map)


def test_fuse_records_the_bf16_verdict_on_real_images(tiny_run: Path) -> None:
    members, meta = run_members(tiny_run)
    res = fuse(members, meta, FuseConfig(tiny_run / "ensemble.onnx", run_dir=tiny_run, report=False))
    record = res.verified_precisions[BF16_RECORD]
    stored = json.loads(_props(res.path)[META_VERIFIED_PRECISIONS])[BF16_RECORD]
    assert stored == record and record["bar"] == 0.99
    assert res.files["fp32"].sha256 == file_sha256(res.path)  # the hash of the file with its record
    if not CPU_BF16:
        assert record["accepted"] is False and "no BF16" in record["reason"]
        return
    from cxr.data.manifest import load_manifest

    rows = load_manifest(tiny_run / "manifest.csv").rows
    assert record["images"] == min(200, sum(r.split in ("train", "val") for r in rows))
    assert record["accepted"] == (record["agreement"] >= 0.99)
    info = create_session(res.path, SessionConfig(provider="openvino", precision="auto"))
    assert info.precision == ("bf16" if record["accepted"] else "fp32")


def test_the_heatmap_twin_gets_its_own_bf16_verdict(tiny_run: Path, tmp_path: Path) -> None:
    """The twin is another graph: checked on the same images and recorded in it, so that `--precision auto` (and
    the DICOM node, which runs the twin) can run it in BF16; without its own record it would stay FP32."""
    members, meta = run_members(tiny_run)
    cfg = FuseConfig(tmp_path / "ensemble.onnx", run_dir=tiny_run, report=False, heatmaps=True)
    res = fuse(members, meta, cfg)
    assert res.heatmaps is not None
    twin = res.heatmaps.path
    stored = json.loads(_props(twin)[META_VERIFIED_PRECISIONS])[BF16_RECORD]
    assert res.heatmaps.sha256 == file_sha256(twin)  # the hash of the twin with its record
    assert stored["images"] == res.verified_precisions[BF16_RECORD]["images"]
    if not CPU_BF16:
        assert stored["accepted"] is False and "no BF16" in stored["reason"]
        return
    assert stored["accepted"] == (stored["agreement"] >= 0.99)
    info = create_session(twin, SessionConfig(provider="openvino", precision="auto"))
    assert info.precision == ("bf16" if stored["accepted"] else "fp32")


@pytest.mark.parametrize("cfg", [{"bf16_check": False}, {"run_dir": None}])
def test_no_record_without_the_check_or_without_images(tiny_run: Path, tmp_path: Path, cfg: dict) -> None:
    members, meta = run_members(tiny_run)
    options = {"run_dir": tiny_run, "report": False, **cfg}
    res = fuse(members, meta, FuseConfig(tmp_path / "ensemble.onnx", **options))
    assert res.verified_precisions == {} and META_VERIFIED_PRECISIONS not in _props(res.path)


def _near_tie(path: Path, hw: int = 16) -> Path:
    """uint8 [N,1,4,4] -> two logits x.w and x.w(1 + 1e-4): FP32 always picks class 1, BF16 sees a tie."""
    w = np.full((hw, 2), 1.0 / hw, dtype=np.float32)
    w[:, 1] *= 1 + 1e-4
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "near_tie",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1, hw], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(not CPU_BF16, reason="this CPU has no BF16: OpenVINO cannot run the check here")
def test_bf16_below_the_bar_is_refused_and_the_runtime_obeys(tmp_path: Path) -> None:
    path = _near_tie(tmp_path / "tie.onnx")
    images = np.random.default_rng(0).integers(1, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    fp32 = cpu_session(str(path)).run(["probabilities"], {"image": images})[0]
    assert (fp32.argmax(1) == 1).all()  # the reference really picks class 1
    record = check_openvino_bf16(path, images, min_agreement=0.99, threads=1)
    assert record is not None and record["accepted"] is False and record["agreement"] < 0.99
    assert record["images"] == 40 and "below the bar" in record["reason"]
    write_record(path, record)
    with pytest.raises(ProviderError, match="refused"):
        create_session(path, SessionConfig(provider="openvino", precision="bf16"))
    auto = create_session(path, SessionConfig(provider="openvino", precision="auto"))
    assert auto.precision == "fp32" and any("below the bar" in w for w in auto.warnings)


def test_a_folder_of_images_can_serve_the_check_without_a_run(tiny_run: Path, tmp_path: Path) -> None:
    members, meta = run_members(tiny_run)
    cfg = FuseConfig(tmp_path / "e.onnx", check_images=tiny_run / "data", bf16_check_images=7, report=False)
    record = fuse(members, meta, cfg).verified_precisions[BF16_RECORD]
    assert record["images"] == (7 if CPU_BF16 else 0)
