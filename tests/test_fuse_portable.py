"""The fused ensemble in the default ONNX domain only, so OpenVINO reads it and computes what onnxruntime does.

Takes a tiny two-member run (``tests.test_fuse.build_tiny_run``: tiny torch CNNs exported with FP16 and INT8
variants) and fuses it with each meta-learner of ``cxr.stack.estimators``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from cxr.fuse import FuseConfig, fuse  # noqa: E402
from cxr.session import cpu_session  # noqa: E402
from cxr.spec import INPUT_IMAGE, OUTPUT_LABEL, OUTPUT_PROBABILITIES  # noqa: E402
from cxr.stack.estimators import ESTIMATORS  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta  # noqa: E402
from tests.test_fuse import build_tiny_run  # noqa: E402

MEMBERS = {"alpha": 32, "beta": 32}
PRECISIONS = ("fp32", "fp16", "int8")
# OpenVINO (inference precision f32) vs onnxruntime on the same file; measured 6e-8 (fp32), 3.5e-5 (fp16)
OV_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-4}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("portable") / "run", MEMBERS, variants=True)


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def fused(request: pytest.FixtureRequest, tiny_run: Path) -> dict[str, Path]:
    """{precision: fused file} for one meta-learner kind, cross-validated over its table grid as `cxr stack` does.

    (LDA without shrinkage on these 20 collinear rows gets coefficients ~5e15; OpenVINO computes float64 in
    float32 and is then nowhere near onnxruntime. The table's LDA always shrinks.)
    """
    kind = request.param
    out_dir = tiny_run / f"stack_{kind}"
    meta = fit_meta(MetaConfig(tiny_run, tuple(MEMBERS), estimator=kind, cv_folds=3, out_dir=out_dir))
    members = [tiny_run / "onnx" / f"{name}.onnx" for name in MEMBERS]
    res = fuse(
        members,
        meta.onnx_path,
        FuseConfig(tiny_run / f"ensemble_{kind}.onnx", variants=("fp16", "int8"), report=False),
    )
    assert set(res.files) == set(PRECISIONS), res.skipped_variants
    return {precision: f.path for precision, f in res.files.items()}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(8, 1, 32, 32), dtype=np.uint8)


def _onnxruntime(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, label = cpu_session(path, threads=1).run(
        [OUTPUT_PROBABILITIES, OUTPUT_LABEL], {INPUT_IMAGE: images}
    )
    return probs, label


def _openvino(path: Path, images: np.ndarray, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, **config})
    out = compiled({INPUT_IMAGE: images})
    return out[compiled.output(OUTPUT_PROBABILITIES)], out[compiled.output(OUTPUT_LABEL)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_node_of_the_fused_graph_is_in_the_default_domain(
    fused: dict[str, Path], precision: str
) -> None:
    model = onnx.load(str(fused[precision]))
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    assert {n.domain for n in nodes} == {""}
    assert [o.domain for o in model.opset_import] == [""]
    meta_ops = {n.op_type for n in nodes if n.name.startswith("meta/")}
    assert {"Softmax", "ArgMax"} <= meta_ops and not meta_ops & {"LinearClassifier", "ArrayFeatureExtractor"}


@pytest.mark.parametrize("precision", sorted(OV_TOLERANCE))
def test_openvino_computes_what_onnxruntime_does(
    fused: dict[str, Path], images: np.ndarray, precision: str
) -> None:
    probs, label = _openvino(fused[precision], images, {"INFERENCE_PRECISION_HINT": "f32"})
    ref_probs, ref_label = _onnxruntime(fused[precision], images)
    assert probs.shape == ref_probs.shape == (8, 4) and label.dtype == np.int64
    assert np.max(np.abs(probs - ref_probs)) <= OV_TOLERANCE[precision]
    if precision == "fp32":
        np.testing.assert_array_equal(label, ref_label)


def test_openvino_compiles_at_its_default_precision(fused: dict[str, Path], images: np.ndarray) -> None:
    """Plain ``compile_model(path, "CPU")``: bf16 on CPUs that have it (measured 9e-4 from onnxruntime)."""
    probs, _ = _openvino(fused["fp32"], images, {})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    assert np.max(np.abs(probs - _onnxruntime(fused["fp32"], images)[0])) <= 1e-2


def test_openvino_reads_and_runs_the_int8_graph(fused: dict[str, Path], images: np.ndarray) -> None:
    """Every node converts; compiled without OpenVINO's low-precision passes, which crash on the tiny members'
    quantized ``Gemm * 3.0`` (MultiplyPartialTransformation, the INT8 member alone too). Measured 1.6e-2."""
    ov = pytest.importorskip("openvino")
    assert ov.Core().read_model(str(fused["int8"])).outputs
    probs, _ = _openvino(
        fused["int8"], images, {"INFERENCE_PRECISION_HINT": "f32", "LP_TRANSFORMS_MODE": False}
    )
    assert np.max(np.abs(probs - _onnxruntime(fused["int8"], images)[0])) <= 5e-2
