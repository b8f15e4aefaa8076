"""Verification: the verdict rules, and a deliberately perturbed graph that must fail loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.errors import VerificationError
from cxr.export.verify import VerifyConfig, compare_logits
from cxr.spec import softmax

CFG = VerifyConfig(name="m", strict=False)


def logits(n: int = 16, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 3


def test_identical_outputs_pass() -> None:
    ref = logits()
    rep = compare_logits(ref, ref.copy(), CFG, reference="a", candidate="b", inputs={"val": 16})
    assert rep.passed and rep.max_abs == 0.0 and rep.top1_agreement == 1.0 and rep.n == 16
    assert rep.inputs == {"val": 16}


@pytest.mark.parametrize(
    ("shift", "passed"),
    [(1e-6, True), (5e-3, False)],  # logit shifts: far below / above the 1e-4 probability tolerance
)
def test_probability_tolerance(shift: float, passed: bool) -> None:
    ref = logits()
    cand = ref.copy()
    cand[:, 0] += shift
    rep = compare_logits(ref, cand, CFG, reference="a", candidate="b")
    assert rep.passed is passed
    assert np.isclose(rep.max_abs, np.abs(softmax(cand) - softmax(ref)).max())
    if not passed:
        assert "max abs probability difference" in rep.reasons[0]


def test_one_flipped_top1_fails_fp32_but_an_exact_tie_does_not() -> None:
    ref = logits()
    cand = ref.copy()
    i = 3
    top = int(ref[i].argmax())
    cand[i, (top + 1) % 4] = ref[i, top] + 1.0  # a real flip
    rep = compare_logits(ref, cand, VerifyConfig(atol=None, strict=False), reference="a", candidate="b")
    assert not rep.passed and rep.n_disagree == 1 and rep.n_ties == 0 and rep.top1_agreement == 15 / 16
    tied = ref.copy()
    tied[i] = [1.0, 1.0, 0.0, 0.0]  # reference cannot tell class 0 from 1
    cand = tied.copy()
    cand[i, 1] += 1e-7
    rep = compare_logits(tied, cand, CFG, reference="a", candidate="b")
    assert rep.passed and rep.n_disagree == 1 and rep.n_ties == 1


def test_min_top1_threshold_for_variants() -> None:
    ref = logits(n=100)
    cand = ref.copy()
    top = ref[0].argmax()
    cand[0, (top + 1) % 4] = ref[0, top] + 1  # 1 of 100 differs: 99% agreement
    loose = VerifyConfig(atol=None, min_top1=0.99, tie_margin=0.0, strict=False)
    assert compare_logits(ref, cand, loose, reference="a", candidate="b").passed
    strict = VerifyConfig(atol=None, min_top1=0.995, tie_margin=0.0, strict=False)
    assert not compare_logits(ref, cand, strict, reference="a", candidate="b").passed


def test_non_finite_and_shape_mismatch_fail() -> None:
    ref = logits()
    bad = ref.copy()
    bad[2, 1] = np.nan
    rep = compare_logits(ref, bad, CFG, reference="a", candidate="b")
    assert not rep.passed and "non-finite" in rep.reasons[0]
    rep = compare_logits(ref, ref[:, :3], CFG, reference="a", candidate="b")
    assert not rep.passed and "shape" in rep.reasons[0]


def test_perturbed_graph_fails_verification_naming_the_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    onnx = pytest.importorskip("onnx")
    from cxr.export.onnx_export import ExportConfig, export_onnx
    from cxr.export.verify import verify_onnx
    from cxr.spec import ModelMetadata, PreprocessSpec

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    path = tmp_path / "alpha.onnx"
    meta = ModelMetadata(preprocess=PreprocessSpec.square(32))
    export_onnx(model, ExportConfig(out=path, metadata=meta, input_size=(32, 32), check_batches=(2,)))
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32), dtype=np.float32)
    assert verify_onnx(model, path, x, VerifyConfig(name="alpha")).passed

    proto = onnx.load(str(path))
    (bias,) = [t for t in proto.graph.initializer if list(t.dims) == [4]]  # the classifier's bias
    arr = onnx.numpy_helper.to_array(bias).copy()
    arr[1] += np.float32(0.05)  # one class's logit moves by 0.05: its probability moves by ~1e-2
    bias.CopyFrom(onnx.numpy_helper.from_array(arr, bias.name))
    onnx.save(proto, str(path))
    with pytest.raises(VerificationError, match="alpha") as info:
        verify_onnx(model, path, x, VerifyConfig(name="alpha"))
    assert info.value.exit_code == 1
    report = verify_onnx(model, path, x, VerifyConfig(name="alpha", strict=False))
    assert not report.passed and report.max_abs > 1e-4
