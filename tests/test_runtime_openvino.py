"""The OpenVINO backend: FP32 equals onnxruntime, BF16 only with CPU support and an accepting record,
the adapter's onnxruntime-like API, precision refusals, the missing-package error, Predictor/CLI/API/bench."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxr.errors import ConfigError, ModelError, ProviderError
from cxr.labels import CLASSES
from cxr.openvino_session import BF16_RECORD, META_VERIFIED_PRECISIONS, choose_precision, cpu_has_bf16
from cxr.runtime import Predictor, PredictorConfig
from cxr.session import SessionConfig, cpu_session, create_session
from cxr.spec import ModelMetadata, PreprocessSpec
from tests.onnx_factory import make_fused_model

ov = pytest.importorskip("openvino")

CPU_BF16 = cpu_has_bf16(ov.Core())
ACCEPTED = {"accepted": True, "agreement": 0.995, "images": 200, "bar": 0.99, "reason": "agreement over bar"}
REFUSED = {"accepted": False, "agreement": 0.97, "images": 200, "bar": 0.99, "reason": "top-1 flips on 6"}
RECORDS: dict[str, dict[str, Any] | None] = {"accepted": ACCEPTED, "refused": REFUSED, "none": None}
SIZE = 8


def _props(record: dict[str, Any] | None) -> dict[str, str]:
    meta = ModelMetadata(
        classes=CLASSES,
        preprocess=PreprocessSpec.square(SIZE),
        input_format="float_normalized",
        card={"kind": "member", "name": "tiny_conv"},
    )
    props = meta.to_props()
    if record is not None:
        props[META_VERIFIED_PRECISIONS] = json.dumps({BF16_RECORD: record})
    return props


def make_conv_model(path: Path, record: dict[str, Any] | None) -> Path:
    """input float32 [N, 1, 8, 8] -> Conv -> Relu -> Flatten -> MatMul + Add -> logits, Softmax -> probs."""
    rng = np.random.default_rng(1)
    k = len(CLASSES)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((2 * SIZE * SIZE, k)).astype(np.float32) * 0.1, "fc_w"),
        numpy_helper.from_array(rng.standard_normal(k).astype(np.float32) * 0.1, "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cxr-tests")
    model.ir_version = 8
    for key, value in _props(record).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ov_models")
    return {name: make_conv_model(folder / f"conv_{name}.onnx", rec) for name, rec in RECORDS.items()}


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)


def _openvino(model: Path, precision: str = "fp32", **kw: Any) -> Any:
    return create_session(model, SessionConfig(provider="openvino", precision=precision, threads=1, **kw))


def test_fp32_equals_onnxruntime(models: dict[str, Path], batch: np.ndarray) -> None:
    info = _openvino(models["none"])
    assert (info.providers, info.provider, info.precision, info.device) == (
        ("openvino",),
        "openvino",
        "fp32",
        "CPU",
    )
    assert info.warnings == () and info.label == "openvino (CPU, fp32)"
    got = info.session.run(None, {"input": batch})
    want = cpu_session(models["none"], threads=1).run(None, {"input": batch})
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_the_adapter_answers_like_an_onnxruntime_session(models: dict[str, Path], batch: np.ndarray) -> None:
    sess = _openvino(models["accepted"]).session
    ort_sess = cpu_session(models["accepted"])
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("input", "tensor(float)", [None, 1, 8, 8])
    ]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [
        (o.name, o.type) for o in ort_sess.get_outputs()
    ]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta == dict(ort_sess.get_modelmeta().custom_metadata_map) == _props(ACCEPTED)
    assert sess.get_providers() == ["openvino"]
    logits, probs = sess.run(["logits", "probabilities"], {"input": batch})  # the order asked for
    assert logits.shape == probs.shape == (3, len(CLASSES)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("outputs", "feeds", "message"),
    [
        (["nope"], {"input": np.zeros((1, 1, 8, 8), np.float32)}, "unknown outputs ['nope']"),
        (None, {"image": np.zeros((1, 1, 8, 8), np.float32)}, "do not match the model's inputs"),
        (None, {"input": np.zeros((1, 1, 8, 8), np.float64)}, "expects tensor(float)"),
    ],
)
def test_bad_outputs_or_feeds_are_refused_like_onnxruntime(
    models: dict[str, Path], outputs: list[str] | None, feeds: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ModelError, match=re.escape(message)):
        _openvino(models["none"]).session.run(outputs, feeds)


def test_concurrent_runs_on_one_session_agree(models: dict[str, Path], batch: np.ndarray) -> None:
    sess = _openvino(models["none"]).session
    want = sess.run(["probabilities"], {"input": batch})[0]
    results: list[np.ndarray] = []

    def client() -> None:
        for _ in range(5):
            results.append(sess.run(["probabilities"], {"input": batch})[0])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(np.array_equal(r, want) for r in results)


# (requested, record, CPU has BF16, precision that runs or None for a refusal, words in the note/error)
CASES = [
    ("auto", "accepted", True, "bf16", "check accepted it"),
    ("auto", "refused", True, "fp32", "top-1 flips on 6"),
    ("auto", "none", True, "fp32", f"no '{BF16_RECORD}' record"),
    ("bf16", "accepted", True, "bf16", ""),
    ("bf16", "refused", True, None, "top-1 flips on 6"),
    ("bf16", "none", True, None, f"no '{BF16_RECORD}' record"),
    ("fp32", "accepted", True, "fp32", ""),
    ("auto", "accepted", False, "fp32", "no BF16 support"),
    ("bf16", "accepted", False, None, "no BF16 support"),
    ("bf16", "none", False, None, "no BF16 support"),
    ("fp32", "none", False, "fp32", ""),
]


@pytest.mark.parametrize(("requested", "record", "cpu", "runs", "words"), CASES)
def test_precision_needs_cpu_support_and_an_accepting_record(
    models: dict[str, Path],
    batch: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    requested: str,
    record: str,
    cpu: bool,
    runs: str | None,
    words: str,
) -> None:
    if cpu and not CPU_BF16:  # this CPU cannot: a bf16 request is refused for that, and auto says so
        runs = None if requested == "bf16" else "fp32"
        words = "" if requested == "fp32" else "no BF16 support"
    if not cpu:
        monkeypatch.setattr("cxr.openvino_session.cpu_has_bf16", lambda core: False)
    if runs is None:
        with pytest.raises(ProviderError) as err:
            _openvino(models[record], requested)
        assert words in err.value.message and err.value.hint
        return
    info = _openvino(models[record], requested)
    assert info.precision == runs and info.providers == ("openvino",)
    assert words in " ".join(info.warnings) and (requested == "auto") == bool(info.warnings)
    got = info.session.run(["probabilities"], {"input": batch})[0]
    want = cpu_session(models[record]).run(["probabilities"], {"input": batch})[0]
    np.testing.assert_allclose(got, want, atol=1e-5 if runs == "fp32" else 3e-2)


@pytest.mark.parametrize(
    ("record", "cpu", "runs", "words"),
    [
        ({**ACCEPTED, "agreement": 0.98}, True, "fp32", "under its bar"),
        ({"accepted": "yes"}, True, "fp32", "no reason recorded"),
        ({"accepted": True}, True, "bf16", "no agreement figures recorded"),
    ],
)
def test_records_are_read_strictly(record: dict[str, Any], cpu: bool, runs: str, words: str) -> None:
    props = {META_VERIFIED_PRECISIONS: json.dumps({BF16_RECORD: record})}
    choice = choose_precision("auto", cpu_bf16=cpu, props=props, model_name="m.onnx")
    assert choice.precision == runs and choice.note is not None and words in choice.note


def test_a_malformed_record_is_refused() -> None:
    with pytest.raises(ProviderError, match="not valid JSON"):
        choose_precision("bf16", cpu_bf16=True, props={META_VERIFIED_PRECISIONS: "{"}, model_name="m.onnx")


@pytest.mark.parametrize(
    ("provider", "precision", "words"),
    [
        ("openvino", "fp16", "unknown precision 'fp16'"),
        ("cpu", "int4", "unknown precision 'int4'"),
        ("cuda", "int8", "cannot run precision 'int8'"),
        ("tensorrt", "int8", "cannot run precision 'int8'"),
        ("cpu", "bf16", "cannot run precision 'bf16'"),
        ("auto", "bf16", "cannot run precision 'bf16'"),
        ("cuda", "bf16", "cannot run precision 'bf16'"),
    ],
)
def test_precisions_a_provider_cannot_run_are_refused(provider: str, precision: str, words: str) -> None:
    with pytest.raises(ProviderError) as err:
        SessionConfig(provider=provider, precision=precision)
    assert words in err.value.message and err.value.hint
    if "cannot run" in words:
        assert (
            "FP32 file" in err.value.hint
            and "INT8 variant" in err.value.hint
            and "on the CPU" in err.value.hint
        )


def test_the_api_config_refuses_them_too(models: dict[str, Path]) -> None:
    from cxr.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="cannot run precision 'bf16'"):
        ServeConfig(model=models["none"], session={"provider": "cpu", "precision": "bf16"})
    on_openvino = ServeConfig(model=models["none"], session=SessionConfig("openvino", precision="bf16"))
    assert on_openvino.session.precision == "bf16"


def test_without_openvino_the_error_says_how_to_install_it(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # any import of openvino now raises ImportError
    with pytest.raises(ProviderError) as err:
        _openvino(models["none"])
    assert "openvino" in err.value.message and "pip install -e '.[openvino]'" in (err.value.hint or "")


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fused_model(tmp_path_factory.mktemp("ov_fused") / "fused.onnx")


def test_predictor_on_openvino_matches_onnxruntime(fused: Path, gray_pngs: list[Path]) -> None:
    ov_cfg = PredictorConfig(session=SessionConfig("openvino", threads=1, precision="fp32"), batch_size=4)
    ov_pred = Predictor.from_path(fused, ov_cfg)
    ort_pred = Predictor.from_path(fused, PredictorConfig(batch_size=4), provider="cpu", threads=1)
    described = ov_pred.describe()
    assert (described["provider"], described["providers"], described["precision"], described["device"]) == (
        "openvino",
        ["openvino"],
        "fp32",
        "CPU",
    )
    assert ort_pred.describe()["precision"] is None
    for a, b in zip(ov_pred.predict(gray_pngs), ort_pred.predict(gray_pngs), strict=True):
        assert a.ok and a.provider == "openvino" and a.label == b.label
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert a.member_probabilities is not None and b.member_probabilities is not None
        np.testing.assert_allclose(
            list(a.member_probabilities["beta"].values()),
            list(b.member_probabilities["beta"].values()),
            atol=1e-5,
        )


def test_cxr_predict_runs_and_reports_openvino(fused: Path, gray_pngs: list[Path]) -> None:
    from typer.testing import CliRunner

    from cxr.cli.predict import app

    runner = CliRunner()
    args = [
        "image",
        str(gray_pngs[0]),
        "-m",
        str(fused),
        "--provider",
        "openvino",
        "--threads",
        "1",
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"]["provider"] == "openvino" and doc["model"]["precision"] in ("fp32", "bf16")
    assert any("precision auto ->" in w for w in doc["model"]["provider_warnings"])
    res = runner.invoke(app, ["image", str(gray_pngs[0]), "-m", str(fused), "--precision", "bf16"])
    assert res.exit_code == 2 and "cannot run precision 'bf16'" in res.stderr


def test_the_api_serves_on_openvino_and_says_which_precision(fused: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app
    from cxr.serve.config import ServeConfig
    from tests.test_serve_app import wait_ready

    with TestClient(
        create_app(ServeConfig(model=fused, session=SessionConfig("openvino", threads=1)))
    ) as client:
        wait_ready(client)
        info, ready = client.get("/v1/model").json(), client.get("/readyz").json()
    assert info["provider"] == "openvino" and info["providers"] == ["openvino"]
    assert any("precision auto -> fp32" in w for w in info["provider_warnings"])  # the fixture has no record
    assert ready["provider"] == "openvino" and "precision auto -> fp32" in ready["message"]


def test_cxr_bench_opens_openvino_from_a_provider_string(fused: Path) -> None:
    from cxr.bench.config import BenchConfig
    from cxr.bench.measure import open_predictor

    cfg = BenchConfig(model=fused, providers=("cpu", "openvino"))
    assert cfg.providers == ("cpu", "openvino")
    predictor, seconds = open_predictor(fused, cfg.session_for("openvino", "auto", 1))
    assert predictor.info.providers == ("openvino",) and predictor.info.precision in ("fp32", "bf16")
    assert seconds > 0


def test_the_openvino_path_needs_no_training_library(fused: Path, tmp_path: Path) -> None:
    code = f"""
        import sys
        for name in ("torch", "timm", "sklearn", "onnx", "skl2onnx", "torchvision"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import numpy as np
        from cxr.runtime import Predictor, PredictorConfig, SessionConfig
        session = SessionConfig("openvino", threads=1, precision="fp32")
        p = Predictor.from_path({str(fused)!r}, PredictorConfig(session=session))
        print(p.predict_arrays([np.full((32, 32), 9, np.uint8)])[0].provider, p.info.precision)
    """
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["openvino", "fp32"]
