"""Predictor: metadata contract, providers and fallback, batching, error rows, decode/inference overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cxr.errors import ModelError, ProviderError
from cxr.imaging.decode import decode_gray
from cxr.labels import CLASSES, NOTICE
from cxr.runtime import Predictor, PredictorConfig, SessionConfig
from cxr.runtime.predictor import RawOutput
from cxr.session import trt_cache_dir
from tests.onnx_factory import make_fused_model, make_member_model


def test_model_without_metadata_is_refused_with_how_to_reexport(tmp_path: Path) -> None:
    path = make_fused_model(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelError) as info:
        Predictor.from_path(path)
    assert "no cxr metadata" in info.value.message
    assert "cxr fuse" in (info.value.hint or "") and "cxr export" in (info.value.hint or "")


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Predictor.from_path(tmp_path / "nope.onnx")


def test_fused_model_predictions_match_a_direct_onnxruntime_run(
    fused_model: Path, gray_pngs: list[Path]
) -> None:
    pred = Predictor.from_path(fused_model, provider="cpu", threads=1)
    assert pred.classes == CLASSES and pred.member_names == ("alpha", "beta") and pred.provider == "cpu"
    out = pred.predict(gray_pngs)
    sess = ort.InferenceSession(str(fused_model), providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(pred.prepare([decode_gray(p)]))[0] for p in gray_pngs])
    probs, _, members = sess.run(None, {"image": x})
    for i, p in enumerate(out):
        assert p.ok and p.source == str(gray_pngs[i]) and p.provider == "cpu" and p.notice == NOTICE
        np.testing.assert_allclose([p.probabilities[c] for c in CLASSES], probs[i], rtol=1e-6)
        assert p.label == CLASSES[int(probs[i].argmax())] and p.probability == pytest.approx(probs[i].max())
        assert p.member_probabilities is not None
        np.testing.assert_allclose(list(p.member_probabilities["beta"].values()), members[i, 1], rtol=1e-6)


def test_member_model_logits_become_probabilities(member_model: Path, gray_pngs: list[Path]) -> None:
    pred = Predictor.from_path(member_model)
    assert pred.normalized_input
    out = pred.predict(gray_pngs[:3])
    for p in out:
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert p.member_probabilities is None


@pytest.mark.parametrize("batch_size,workers", [(1, 1), (3, 2), (8, 3)])
def test_results_do_not_depend_on_batching(
    fused_model: Path, gray_pngs: list[Path], batch_size: int, workers: int
) -> None:
    ref = Predictor.from_path(fused_model, PredictorConfig(batch_size=8)).predict(gray_pngs)
    cfg = PredictorConfig(batch_size=batch_size, decode_workers=workers)
    out = Predictor.from_path(fused_model, cfg).predict(gray_pngs)
    assert [p.source for p in out] == [p.source for p in ref]
    for a, b in zip(out, ref, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, rel=1e-5)


def test_paths_bytes_and_arrays_agree(fused_model: Path, gray_pngs: list[Path]) -> None:
    pred = Predictor.from_path(fused_model)
    path = gray_pngs[0]
    a, b, c = pred.predict([path, path.read_bytes(), decode_gray(path)])
    assert (a.source, b.source, c.source) == (str(path), "<bytes>", "array[2]")
    assert a.probabilities == b.probabilities == pytest.approx(c.probabilities)
    direct = pred.predict_arrays([decode_gray(path)], ["x"])[0]
    assert direct.probabilities == pytest.approx(a.probabilities)


def test_unreadable_items_become_error_rows_in_place(
    fused_model: Path, gray_pngs: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    items = [gray_pngs[0], bad, tmp_path / "missing.png", gray_pngs[1]]
    predictor = Predictor.from_path(fused_model, PredictorConfig(batch_size=2))
    out = predictor.predict(items)
    assert [p.ok for p in out] == [True, False, False, True]
    assert "not an image" in (out[1].error or "") and "no such file" in (out[2].error or "")
    assert out[1].label is None and out[1].probability is None and out[1].provider == "cpu"
    assert out[1].model_id == predictor.model_id and out[1].warnings == predictor.warnings


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), 3, {"image": "a.png"}, None],
    ids=["float-array", "two-channel", "int", "dict", "none"],
)
def test_inputs_that_are_no_image_raise_type_error(fused_model: Path, bad: object) -> None:
    with pytest.raises(TypeError, match="predict|array"):
        Predictor.from_path(fused_model).predict(bad)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        Predictor.from_path(fused_model).predict([bad])  # type: ignore[list-item]


def test_one_input_gives_one_prediction_and_pil_and_rgb_inputs_match_gray(
    fused_model: Path, gray_pngs: list[Path]
) -> None:
    from PIL import Image

    predictor = Predictor.from_path(fused_model)
    one = predictor.predict(str(gray_pngs[0]))  # a string is one path, not 24 characters
    assert one.ok and one.source == str(gray_pngs[0])
    assert predictor.predict(gray_pngs[0]).probabilities == one.probabilities
    gray = decode_gray(gray_pngs[0])
    rgb = np.repeat(gray[..., None], 3, axis=2)
    pil = Image.fromarray(rgb, mode="RGB")
    for item in (rgb, pil, gray):
        assert predictor.predict(item).probabilities == pytest.approx(one.probabilities, abs=1e-6)


def test_iter_predict_yields_batches_in_order(fused_model: Path, gray_pngs: list[Path]) -> None:
    pred = Predictor.from_path(fused_model, PredictorConfig(batch_size=4))
    batches = list(pred.iter_predict(gray_pngs, names=[f"n{i}" for i in range(len(gray_pngs))]))
    assert [len(b) for b in batches] == [4, 2]
    assert [p.source for b in batches for p in b] == [f"n{i}" for i in range(6)]


def test_decoding_of_the_next_batch_overlaps_inference(fused_model: Path, gray_pngs: list[Path]) -> None:
    """While batch k runs, the workers must already be decoding batch k+1."""
    pred = Predictor.from_path(
        fused_model, PredictorConfig(batch_size=2, decode_workers=2, prefetch_batches=1)
    )
    events: list[tuple[str, float]] = []
    lock = threading.Lock()
    real_load, real_run = pred.load, pred.run

    def slow_load(item: object) -> np.ndarray:
        with lock:
            events.append(("load", time.perf_counter()))
        return real_load(item)  # type: ignore[arg-type]

    def slow_run(batch: np.ndarray, heatmaps: bool | None = None) -> RawOutput:
        start = time.perf_counter()
        time.sleep(0.15)
        with lock:
            events.append(("run", start))
        return real_run(batch, heatmaps)

    pred.load = slow_load  # type: ignore[method-assign]
    pred.run = slow_run  # type: ignore[method-assign]
    out = pred.predict(gray_pngs)  # 3 batches of 2
    assert all(p.ok for p in out)
    first_run = min(t for kind, t in events if kind == "run")
    loads = sorted(t for kind, t in events if kind == "load")
    assert sum(t < first_run + 0.15 for t in loads) >= 4  # batches 0 and 1 loaded before batch 0 finished


def test_fallback_from_cuda_to_cpu_is_reported(fused_model: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot be provoked")
    pred = Predictor.from_path(fused_model, provider="cuda")
    assert pred.provider == "cpu" and pred.info.requested == "cuda"
    assert len(pred.info.warnings) == 1 and "asked for provider 'cuda'" in pred.info.warnings[0]
    assert pred.describe()["provider_warnings"] == list(pred.info.warnings)
    with pytest.raises(ProviderError, match="'cuda'.*'cpu'"):
        Predictor.from_path(fused_model, PredictorConfig(session=SessionConfig("cuda", strict_provider=True)))


def test_auto_provider_gives_no_warning_on_cpu(fused_model: Path) -> None:
    pred = Predictor.from_path(fused_model, PredictorConfig(session=SessionConfig(provider="auto")))
    assert pred.info.warnings == () and pred.provider in ("cpu", "cuda", "tensorrt")


def test_unknown_provider_is_refused(fused_model: Path) -> None:
    with pytest.raises(ProviderError, match="unknown provider 'rocm'"):
        Predictor.from_path(fused_model, provider="rocm")


def test_padding_short_batches_does_not_change_results(fused_model: Path, gray_pngs: list[Path]) -> None:
    plain = Predictor.from_path(fused_model, PredictorConfig(batch_size=4, pad_batches=False))
    padded = Predictor.from_path(fused_model, PredictorConfig(batch_size=4, pad_batches=True))
    assert padded.pads_batches and not plain.pads_batches
    batch = plain.prepare([decode_gray(p) for p in gray_pngs[:3]])
    a, b = plain.run(batch), padded.run(batch)
    assert a.probabilities.shape == b.probabilities.shape == (3, 4)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-6)
    assert b.member_probabilities is not None and b.member_probabilities.shape == (3, 2, 4)


def test_describe_carries_provider_model_id_and_notice(fused_model: Path) -> None:
    pred = Predictor.from_path(fused_model)
    d = pred.describe()
    assert d["provider"] == "cpu" and d["model_id"] == pred.model_id and len(pred.model_id) == 16
    assert d["classes"] == list(CLASSES) and d["members"] == ["alpha", "beta"] and d["notice"] == NOTICE
    assert d["input_size"] == [32, 32] and d["input_format"] == "uint8_gray"


def test_tensorrt_cache_dir_is_keyed_by_model_versions_gpu_and_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_GPU_NAME", "NVIDIA H100 80GB HBM3")
    m1 = make_fused_model(tmp_path / "a.onnx", seed=1)
    m2 = make_member_model(tmp_path / "b.onnx")
    cfg = SessionConfig(provider="tensorrt", trt_cache_dir=tmp_path / "trt")
    d1 = trt_cache_dir(cfg, m1)
    assert d1.is_dir() and d1.parent == tmp_path / "trt"
    assert f"ort{ort.__version__}" in d1.name and "NVIDIA_H100_80GB_HBM3" in d1.name and "-trt" in d1.name
    assert d1.name.endswith("fp32")
    assert trt_cache_dir(cfg, m2) != d1
    from dataclasses import replace

    assert trt_cache_dir(replace(cfg, trt_fp16=True), m1).name.endswith("fp16")
    monkeypatch.setenv("CXR_GPU_NAME", "NVIDIA L4")
    assert trt_cache_dir(cfg, m1) != d1


def test_from_path_keywords_override_the_config(fused_model: Path) -> None:
    base = PredictorConfig(session=SessionConfig(provider="auto", threads=None, device_id=0), batch_size=3)
    pred = Predictor.from_path(fused_model, base, provider="cpu", threads=1)
    assert pred.cfg.session == SessionConfig(provider="cpu", threads=1, device_id=0)
    assert pred.cfg.batch_size == 3 and base.session.provider == "auto"  # the caller's config is untouched
    with pytest.raises(TypeError):
        Predictor.from_path(fused_model, batch_size=3)  # type: ignore[call-arg]  # runs go in PredictorConfig


@pytest.mark.parametrize(
    "provider,cpus,expected",
    [("cpu", 2, 1), ("cpu", 16, 2), ("cuda", 16, 8), ("tensorrt", 4, 3), ("cuda", 1, 1)],
)
def test_auto_decode_workers(provider: str, cpus: int, expected: int) -> None:
    from cxr.runtime.predictor import auto_decode_workers

    assert auto_decode_workers(provider, cpus) == expected
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert auto_decode_workers("auto", cpus) == auto_decode_workers("cpu", cpus)
