"""`export_onnx` on tiny timm models: the I/O contract, metadata, batch checks, external data, bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cxr.errors import ConfigError, ModelError  # noqa: E402
from cxr.export import onnx_export  # noqa: E402
from cxr.export.export_types import BATCH_AXIS, DEFAULT_OPSET  # noqa: E402
from cxr.export.exporters import EXPORTER_CHOICES, adaptive_pool_matrix, choose_exporter  # noqa: E402
from cxr.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from cxr.export.onnx_files import onnx_sha256, read_metadata  # noqa: E402
from cxr.labels import CLASSES  # noqa: E402
from cxr.spec import INPUT_MEMBER, OUTPUT_LOGITS, ModelMetadata, PreprocessSpec  # noqa: E402

SIZE = 32
PAPER = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "legacy_xception")


def tiny(name: str = "test_resnet", classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # test-local model construction; the export itself never seeds globally
    return timm.create_model(name, num_classes=classes).eval()


def meta(size: int = SIZE, **card: object) -> ModelMetadata:
    return ModelMetadata(
        CLASSES,
        PreprocessSpec.square(size),
        "float_normalized",
        {"member": "m", "checkpoint_sha256": "ab", **card},
    )


def cfg(out: Path, **kw: object) -> ExportConfig:
    return ExportConfig(out=out, metadata=meta(), input_size=(SIZE, SIZE), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, onnx_export.ExportResult]:
    model = tiny()
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    return model, export_onnx(model, cfg(out))


def test_io_contract_and_dynamic_batch(exported: tuple) -> None:
    model, result = exported
    proto = onnx.load(str(result.path))
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == (INPUT_MEMBER, OUTPUT_LOGITS)
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == [BATCH_AXIS, 3, SIZE, SIZE]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [BATCH_AXIS, len(CLASSES)]
    assert result.opset == DEFAULT_OPSET == next(o.version for o in proto.opset_import if o.domain == "")
    assert result.exporter == "torchscript" and result.ir_version == proto.ir_version
    assert [c.batch for c in result.batch_checks] == [1, 3, 8] and all(c.passed for c in result.batch_checks)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
        got = sess.run(None, {INPUT_MEMBER: x})[0]
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_metadata_round_trip(exported: tuple) -> None:
    _, result = exported
    back = read_metadata(result.path)
    assert back.classes == CLASSES and back.preprocess == PreprocessSpec.square(SIZE)
    assert back.input_format == "float_normalized"
    card = back.card
    assert card["member"] == "m" and card["checkpoint_sha256"] == "ab"  # the caller's card survives
    assert card["exporter"] == "torchscript" and card["opset"] == DEFAULT_OPSET
    assert card["precision"] == "fp32" and card["flops_per_image"] == result.flops_per_image > 0
    assert {"torch", "onnx", "onnxruntime"} <= set(card["export_versions"])
    assert result.sha256 == onnx_sha256(result.path) and result.size_bytes == result.path.stat().st_size


def test_external_data_above_threshold(tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    result = export_onnx(tiny(), cfg(out, external_data_threshold=1024, check_batches=(1, 3)))
    data = out.with_name("ext.onnx.data")
    assert result.external_data and data.is_file() and data.stat().st_size > out.stat().st_size
    assert result.size_bytes == out.stat().st_size + data.stat().st_size
    assert read_metadata(out).card["member"] == "m"
    x = np.zeros((2, 3, SIZE, SIZE), dtype=np.float32)
    assert ort.InferenceSession(str(out)).run(None, {INPUT_MEMBER: x})[0].shape == (2, 4)
    again = export_onnx(tiny(), cfg(out, check_batches=(1,)))  # default threshold: one file, stale data gone
    assert not again.external_data and not data.exists()


def test_simplified_graph_that_changes_outputs_is_not_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_simplify(raw: onnx.ModelProto) -> tuple[onnx.ModelProto, None]:
        bad = onnx.ModelProto()
        bad.CopyFrom(raw)
        (bias,) = [t for t in bad.graph.initializer if list(t.dims) == [len(CLASSES)]]  # the head's bias
        arr = onnx.numpy_helper.to_array(bias) + np.arange(len(CLASSES), dtype=np.float32) * 3
        bias.CopyFrom(onnx.numpy_helper.from_array(arr, bias.name))
        return bad, None

    monkeypatch.setattr(onnx_export, "_try_simplify", broken_simplify)
    result = export_onnx(tiny(), cfg(tmp_path / "m.onnx", check_batches=(1, 3)))
    assert not result.simplified and "differs from PyTorch" in (result.simplify_reason or "")
    assert all(c.passed for c in result.batch_checks)
    assert read_metadata(result.path).card["simplified"] is False


def test_no_simplify_is_recorded(tmp_path: Path) -> None:
    result = export_onnx(tiny(), cfg(tmp_path / "m.onnx", simplify=False, check_batches=(2,)))
    assert not result.simplified and "--no-simplify" in (result.simplify_reason or "")


def test_dynamo_exporter_needs_opset_18(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset 18"):
        export_onnx(tiny(), cfg(tmp_path / "m.onnx", exporter="dynamo"))


@pytest.mark.slow
def test_dynamo_exporter_works_at_opset_18(tmp_path: Path) -> None:
    result = export_onnx(tiny(), cfg(tmp_path / "m.onnx", exporter="dynamo", opset=18, check_batches=(1, 3)))
    assert result.exporter == "dynamo" and result.opset == 18 and all(c.passed for c in result.batch_checks)
    assert read_metadata(result.path).card["exporter"] == "dynamo"


def test_every_paper_architecture_has_a_deliberate_exporter() -> None:
    for name in PAPER:
        choice = choose_exporter(name, "auto", DEFAULT_OPSET)
        assert choice == EXPORTER_CHOICES[name] and choice.reason
    assert choose_exporter("convnext_base", "dynamo", 18).exporter == "dynamo"


@pytest.mark.parametrize(("size_in", "size_out"), [(2, 7), (1, 7), (5, 3), (7, 7), (13, 4)])
def test_adaptive_pool_matrix_matches_torch(size_in: int, size_out: int) -> None:
    x = torch.randn(2, 3, size_in, size_in + 1)
    ph, pw = adaptive_pool_matrix(size_in, size_out), adaptive_pool_matrix(size_in + 1, size_out)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, size_out).numpy()
    np.testing.assert_allclose(ph @ x.numpy() @ pw.T, ref, atol=1e-6)


def test_upsampling_adaptive_pool_exports_with_opset_17(tmp_path: Path) -> None:
    """VGG's head below 224 px: the TorchScript exporter alone refuses this; cxr's scoped symbolic does not."""

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.nn.functional.adaptive_avg_pool2d(x, 7)).flatten(1)

    spec = PreprocessSpec.square(8)
    out = tmp_path / "head.onnx"
    res = export_onnx(
        Head(), ExportConfig(out=out, metadata=ModelMetadata(preprocess=spec), input_size=(8, 8))
    )
    assert all(c.passed for c in res.batch_checks) and res.opset == 17
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMul" in ops
    from torch.onnx._internal.torchscript_exporter import registration

    group = registration.registry.get_function_group("aten::adaptive_avg_pool2d")
    restored = group.get(DEFAULT_OPSET) if group is not None else None
    assert restored is not None and "_adaptive_pool_symbolic" not in restored.__qualname__  # scoped


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"opset": 16}, ConfigError, "opset 16"),
        ({"opset": 999}, ConfigError, "opset 999"),
        ({"trace_batch": 1}, ConfigError, "batch >= 2"),
        ({"exporter": "onnxmagic"}, ConfigError, "unknown exporter"),
        ({"input_size": (64, 64)}, ConfigError, "input_size"),
    ],
)
def test_bad_config_is_refused_with_a_fix(
    tmp_path: Path, change: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        export_onnx(tiny(), replace(cfg(tmp_path / "m.onnx"), **change))
    assert not (tmp_path / "m.onnx").exists()


def test_output_suffix_and_class_count_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.onnx"):
        cfg(tmp_path / "m.pt")
    with pytest.raises(ModelError, match="4 classes"):
        export_onnx(tiny(classes=3), cfg(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_operator_names_the_fix(tmp_path: Path) -> None:
    class Fourier(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft2(x).abs().mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    with pytest.raises(ModelError, match="cannot export") as info:
        export_onnx(Fourier(), cfg(tmp_path / "f.onnx"))
    assert "--exporter" in (info.value.hint or "")


def test_read_metadata_refuses_a_plain_onnx_file(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ModelError, match="no cxr metadata"):
        read_metadata(path)
    with pytest.raises(ModelError, match="does not exist"):
        read_metadata(tmp_path / "missing.onnx")


def test_opset_the_installed_onnxruntime_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_export._ort_runs_opset(DEFAULT_OPSET)
    monkeypatch.setattr(onnx_export, "_ort_runs_opset", lambda opset: opset <= 17)  # an older onnxruntime
    with pytest.raises(ConfigError, match="cannot run opset 19") as info:
        export_onnx(tiny(), cfg(tmp_path / "m.onnx", opset=19))
    assert "--opset 17" in (info.value.hint or "")
