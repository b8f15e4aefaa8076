"""`cxr export-triton`: the generated Triton repository checked against the model's real ONNX signature.

The config is parsed back with an independent reader (tests/test_deploy_triton_pbtxt.py) and compared with the
graph as ``onnx`` reads it (not with onnxruntime, which the writer uses), for the FP32 fused model, its
static-QDQ INT8 variant and a single member. No Triton server runs here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto
from typer.testing import CliRunner

from cxr.cli.main import app
from cxr.deploy.triton import (
    KSERVE_FILE,
    STORAGE_URI_PLACEHOLDER,
    TritonConfig,
    write_triton_repository,
)
from cxr.errors import ConfigError, ModelError
from cxr.labels import NOTICE
from cxr.spec import META_CARD, META_INPUT, ModelMetadata
from tests.onnx_factory import make_fused_model
from tests.test_deploy_triton_pbtxt import one, params, parse_pbtxt

TRITON_TYPE = {
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.INT64: "TYPE_INT64",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_props(model: onnx.ModelProto, updates: dict[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(updates)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


@pytest.fixture(scope="module")
def int8_model(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fused model quantized to static per-channel QDQ INT8, with the variant's card, as cxr ships it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calib(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            feeds = [{"image": rng.integers(0, 256, (2, 1, 32, 32), dtype=np.uint8)} for _ in range(3)]
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    out = tmp_path_factory.mktemp("int8") / "tiny_fused.int8.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    quantize_static(
        str(fused_model),
        str(out),
        Calib(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    model = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    card = json.loads({p.key: p.value for p in model.metadata_props}[META_CARD])
    card.update(precision="int8", fp32_sha256=sha256(fused_model))
    set_props(model, {META_CARD: json.dumps(card, sort_keys=True)})
    onnx.save(model, str(out))
    return out


@pytest.fixture(params=["fp32", "int8", "member"])
def any_model(request: pytest.FixtureRequest, fused_model: Path, member_model: Path) -> Path:
    if request.param == "int8":
        return request.getfixturevalue("int8_model")
    return {"fp32": fused_model, "member": member_model}[request.param]


def graph_tensors(path: Path) -> tuple[list[Any], list[Any]]:
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return [i for i in g.input if i.name not in inits], list(g.output)


def shape_of(vi: Any) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_tensor(entry: dict[str, list[Any]], vi: Any, batched: bool) -> None:
    """One config input/output entry against the ONNX graph's value info."""
    assert one(entry, "name") == vi.name
    assert one(entry, "data_type") == TRITON_TYPE[vi.type.tensor_type.elem_type]
    shape = shape_of(vi)
    rest = shape[1:] if batched else shape
    want = [d if isinstance(d, int) else -1 for d in rest]
    if batched and not want:  # a [batch] tensor: dims [1] and an empty reshape
        assert entry["dims"] == [1] and one(entry, "reshape") == {"shape": []}
    else:
        assert entry["dims"] == want and "reshape" not in entry


def test_config_matches_real_signature(any_model: Path, tmp_path: Path) -> None:
    res = write_triton_repository(any_model, tmp_path / "repo", TritonConfig(max_batch_size=16))
    cfg = parse_pbtxt(res.config_path.read_text())
    inputs, outputs = graph_tensors(any_model)
    assert all(isinstance(shape_of(t)[0], str) for t in inputs + outputs)  # the batch axis is symbolic
    assert one(cfg, "name") == res.model_dir.name == res.model_name
    assert one(cfg, "backend") == "onnxruntime"
    assert one(cfg, "max_batch_size") == 16
    assert [one(e, "name") for e in cfg["input"]] == [t.name for t in inputs]
    assert [one(e, "name") for e in cfg["output"]] == [t.name for t in outputs]
    for entry, vi in zip(cfg["input"] + cfg["output"], inputs + outputs, strict=True):
        check_tensor(entry, vi, batched=True)
    # the version folder holds exactly the source model, and cxr.json its metadata and the notice
    assert res.model_path == res.model_dir / "1" / "model.onnx"
    assert sha256(res.model_path) == sha256(any_model) == res.sha256
    info = json.loads(res.cxr_json.read_text())
    src_props = {p.key: p.value for p in onnx.load(str(any_model), load_external_data=False).metadata_props}
    assert info["metadata_props"] == src_props
    meta = ModelMetadata.from_props(info["metadata_props"])
    assert info["notice"] == NOTICE and NOTICE in res.config_path.read_text()
    assert info["precision"] == str(meta.card.get("precision", "fp32"))
    assert (res.model_dir / "labels.txt").read_text().splitlines() == list(meta.classes)
    assert NOTICE in (res.model_dir / "README.md").read_text()
    labelled = [one(e, "name") for e in cfg["output"] if "label_filename" in e]
    assert labelled == [n for n in ("probabilities", "logits") if n in [t.name for t in outputs]]


def test_int8_variant_is_recorded_as_int8(int8_model: Path, fused_model: Path, tmp_path: Path) -> None:
    res = write_triton_repository(int8_model, tmp_path / "repo", TritonConfig())
    info = json.loads(res.cxr_json.read_text())
    assert info["precision"] == "int8"
    assert res.metadata.card["fp32_sha256"] == sha256(fused_model)
    assert res.model_name == "tiny_fused.int8"
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(res.model_path)).graph.node)


@pytest.mark.parametrize(
    ("max_batch", "preferred", "delay", "want_preferred"),
    [(8, None, 1000, [4, 8]), (32, (4, 16, 8), 250, [4, 8, 16]), (1, None, 0, [1])],
)
def test_dynamic_batching(
    fused_model: Path,
    tmp_path: Path,
    max_batch: int,
    preferred: tuple[int, ...] | None,
    delay: int,
    want_preferred: list[int],
) -> None:
    cfg = TritonConfig(max_batch_size=max_batch, preferred_batch_sizes=preferred, max_queue_delay_us=delay)
    parsed = parse_pbtxt(write_triton_repository(fused_model, tmp_path, cfg).config_path.read_text())
    db = one(parsed, "dynamic_batching")
    assert db["preferred_batch_size"] == want_preferred
    assert one(db, "max_queue_delay_microseconds") == delay
    assert one(parsed, "max_batch_size") == max_batch


@pytest.mark.parametrize(
    ("gpu", "cpu", "gpus", "want"),
    [
        (1, 0, (), [("KIND_GPU", 1, None)]),
        (0, 2, (), [("KIND_CPU", 2, None)]),
        (2, 1, (0, 1), [("KIND_GPU", 2, [0, 1]), ("KIND_CPU", 1, None)]),
    ],
)
def test_instance_groups(
    fused_model: Path, tmp_path: Path, gpu: int, cpu: int, gpus: tuple[int, ...], want: list[Any]
) -> None:
    cfg = TritonConfig(gpu_instances=gpu, cpu_instances=cpu, gpus=gpus)
    parsed = parse_pbtxt(write_triton_repository(fused_model, tmp_path, cfg).config_path.read_text())
    got = [(one(g, "kind"), one(g, "count"), g.get("gpus")) for g in parsed["instance_group"]]
    assert got == want
    assert "optimization" not in parsed and "model_warmup" not in parsed


@pytest.mark.parametrize(
    ("variant", "precision", "want"),
    [("fp32", None, "FP16"), ("int8", None, "INT8"), ("fp32", "fp32", "FP32"), ("int8", "fp16", "FP16")],
)
def test_tensorrt_accelerator(
    request: pytest.FixtureRequest, tmp_path: Path, variant: str, precision: Any, want: str
) -> None:
    model = request.getfixturevalue("fused_model" if variant == "fp32" else "int8_model")
    cfg = TritonConfig(tensorrt=True, trt_precision=precision, max_batch_size=8, preferred_batch_sizes=(2, 4))
    res = write_triton_repository(model, tmp_path, cfg)
    parsed = parse_pbtxt(res.config_path.read_text())
    acc = one(one(one(parsed, "optimization"), "execution_accelerators"), "gpu_execution_accelerator")
    assert one(acc, "name") == "tensorrt"
    p = params(acc)
    assert p["precision_mode"] == want
    assert ("trt_layer_norm_fp32_fallback" in p) == (want == "FP16")
    assert p["trt_engine_cache_enable"] == "1" and res.sha256[:16] in p["trt_engine_cache_path"]
    (inp,) = graph_tensors(model)[0]
    tail = "x".join(str(d) for d in shape_of(inp)[1:])
    assert p["trt_profile_min_shapes"] == f"{inp.name}:1x{tail}"
    assert p["trt_profile_opt_shapes"] == f"{inp.name}:4x{tail}"
    assert p["trt_profile_max_shapes"] == f"{inp.name}:8x{tail}"
    warm = parsed["model_warmup"]
    assert [one(w, "batch_size") for w in warm] == [1, 2, 4]
    assert one(one(warm[0], "inputs"), "key") == inp.name
    assert (want == "FP16" and variant == "int8") == bool(res.warnings)


def test_cpu_threads_become_backend_parameters(fused_model: Path, tmp_path: Path) -> None:
    cfg = TritonConfig(gpu_instances=0, cpu_instances=1, cpu_threads=3)
    parsed = parse_pbtxt(write_triton_repository(fused_model, tmp_path, cfg).config_path.read_text())
    assert params(parsed) == {"intra_op_thread_count": "3", "inter_op_thread_count": "1"}


@pytest.mark.parametrize(("gpu", "uri"), [(1, None), (0, "gs://bucket/cxr-repo")])
def test_kserve_manifest(fused_model: Path, tmp_path: Path, gpu: int, uri: str | None) -> None:
    cfg = TritonConfig(gpu_instances=gpu, cpu_instances=1 - gpu, storage_uri=uri or STORAGE_URI_PLACEHOLDER)
    res = write_triton_repository(fused_model, tmp_path, cfg)
    assert res.kserve_path == tmp_path / KSERVE_FILE
    doc = yaml.safe_load(res.kserve_path.read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    assert doc["metadata"]["annotations"]["cxr/model-name"] == res.model_name
    assert doc["metadata"]["annotations"]["cxr/notice"] == NOTICE
    triton = doc["spec"]["predictor"]["triton"]
    assert triton["storageUri"] == (uri or STORAGE_URI_PLACEHOLDER)
    res_ = triton["resources"]
    assert ("nvidia.com/gpu" in res_["limits"]) == bool(gpu)
    assert res_["requests"]["memory"].endswith("Gi") and res_["limits"]["memory"].endswith("Gi")
    assert int(res_["requests"]["memory"][:-2]) <= int(res_["limits"]["memory"][:-2])


def test_no_kserve_when_disabled(fused_model: Path, tmp_path: Path) -> None:
    res = write_triton_repository(fused_model, tmp_path, TritonConfig(kserve=False))
    assert res.kserve_path is None and not (tmp_path / KSERVE_FILE).exists()


def test_external_data_is_copied_and_loads(fused_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fused_model))
    src = tmp_path / "src" / "ext.onnx"
    src.parent.mkdir()
    onnx.save(model, str(src), save_as_external_data=True, location="ext.onnx.data", size_threshold=1024)
    assert (src.parent / "ext.onnx.data").is_file()
    res = write_triton_repository(src, tmp_path / "repo", TritonConfig())
    copied = res.model_path.parent / "ext.onnx.data"
    assert copied.read_bytes() == (src.parent / "ext.onnx.data").read_bytes()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 1, 32, 32), np.uint8)
    ref = ort.InferenceSession(str(fused_model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(
        sess.run(["probabilities"], {"image": x})[0], ref.run(["probabilities"], {"image": x})[0]
    )


def test_link_shares_the_file(fused_model: Path, tmp_path: Path) -> None:
    res = write_triton_repository(fused_model, tmp_path, TritonConfig(link=True))
    assert res.linked and res.model_path.stat().st_ino == fused_model.stat().st_ino


def test_fixed_batch_model_gets_no_batching(fused_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fused_model))
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    res = write_triton_repository(fixed, tmp_path / "repo", TritonConfig(tensorrt=True))
    parsed = parse_pbtxt(res.config_path.read_text())
    assert one(parsed, "max_batch_size") == 0 and "dynamic_batching" not in parsed
    assert one(parsed, "input")["dims"] == [1, 1, 32, 32]
    assert [o["dims"] for o in parsed["output"]] == [[1, 4], [1], [1, 2, 4]]
    assert all("reshape" not in o for o in parsed["output"]) and "model_warmup" not in parsed
    acc = one(one(one(parsed, "optimization"), "execution_accelerators"), "gpu_execution_accelerator")
    assert not any(k.startswith("trt_profile") for k in params(acc))
    assert res.warnings and "batch" in res.warnings[0]


# --------------------------------------------------------------------------- bad input


def test_model_without_metadata_is_refused_and_nothing_written(tmp_path: Path) -> None:
    bare = make_fused_model(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelError, match="no cxr metadata"):
        write_triton_repository(bare, tmp_path / "repo", TritonConfig())
    assert not (tmp_path / "repo").exists()


def test_metadata_that_contradicts_the_graph_is_refused(member_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(member_model))
    set_props(model, {META_INPUT: json.dumps("uint8_gray")})
    liar = tmp_path / "liar.onnx"
    onnx.save(model, str(liar))
    with pytest.raises(ModelError, match="input format uint8_gray"):
        write_triton_repository(liar, tmp_path / "repo", TritonConfig())


def test_folder_holding_another_model_is_refused_then_forced(fused_model: Path, tmp_path: Path) -> None:
    other = make_fused_model(tmp_path / "other" / "tiny_fused.onnx", seed=7)
    repo = tmp_path / "repo"
    first = write_triton_repository(fused_model, repo, TritonConfig())
    with pytest.raises(ModelError, match="already holds another model") as err:
        write_triton_repository(other, repo, TritonConfig())
    assert "--force" in str(err.value.hint)
    assert sha256(first.model_path) == sha256(fused_model)  # untouched
    again = write_triton_repository(fused_model, repo, TritonConfig(version=2))  # same model: fine
    assert again.model_path.parent.name == "2" and not (again.model_dir / "1").exists()
    forced = write_triton_repository(other, repo, TritonConfig(force=True))
    assert sha256(forced.model_path) == sha256(other)
    assert [p.name for p in repo.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_folder_with_foreign_files_is_refused(fused_model: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny_fused").mkdir()
    (tmp_path / "tiny_fused" / "model.plan").write_bytes(b"x")
    with pytest.raises(ModelError, match="files cxr did not write"):
        write_triton_repository(fused_model, tmp_path, TritonConfig())


def test_model_folder_given_as_repository_is_refused(fused_model: Path, tmp_path: Path) -> None:
    res = write_triton_repository(fused_model, tmp_path, TritonConfig())
    with pytest.raises(ModelError, match="not a model repository"):
        write_triton_repository(fused_model, res.model_dir, TritonConfig())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_batch_size": 0}, "max batch size"),
        ({"preferred_batch_sizes": (16,)}, "preferred batch size 16"),
        ({"gpu_instances": 0, "cpu_instances": 0}, "no instances"),
        ({"gpu_instances": 0, "cpu_instances": 1, "tensorrt": True}, "GPU instances only"),
        ({"model_name": "bad/name"}, "not usable"),
        ({"version": 0}, "version"),
        ({"trt_precision": "int4"}, "unknown TensorRT precision"),
    ],
)
def test_bad_config_values(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        replace(TritonConfig(), **changes)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_repository(fused_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    r = CliRunner().invoke(
        app,
        [
            "export-triton",
            "--model",
            str(fused_model),
            "--output",
            str(out),
            "--name",
            "cxr_ensemble",
            "--cpu-instances",
            "1",
            "--preferred-batch-size",
            "2",
            "--preferred-batch-size",
            "8",
            "--tensorrt",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "cxr_ensemble" in r.output and NOTICE in r.output and "placeholder" in r.output
    parsed = parse_pbtxt((out / "cxr_ensemble" / "config.pbtxt").read_text())
    assert one(parsed, "name") == "cxr_ensemble"
    assert one(parsed, "dynamic_batching")["preferred_batch_size"] == [2, 8]
    assert [one(g, "kind") for g in parsed["instance_group"]] == ["KIND_GPU", "KIND_CPU"]
    assert (out / KSERVE_FILE).is_file()


@pytest.mark.parametrize("case", ["no_metadata", "other_model", "missing", "bad_option"])
def test_cli_bad_input_exits_nonzero_with_message(case: str, fused_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    model = fused_model
    want = {
        "no_metadata": "no cxr metadata",
        "other_model": "already holds another model",
        "missing": "does not exist",
        "bad_option": "max batch size",
    }[case]
    extra: list[str] = []
    if case == "no_metadata":
        model = make_fused_model(tmp_path / "bare.onnx", with_metadata=False)
    elif case == "other_model":
        write_triton_repository(fused_model, out, TritonConfig())
        model = make_fused_model(tmp_path / "x" / "tiny_fused.onnx", seed=5)
    elif case == "missing":
        model = tmp_path / "nope.onnx"
    else:
        extra = ["--max-batch-size", "0"]
    r = CliRunner().invoke(app, ["export-triton", "-m", str(model), "-o", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert want in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args", [["{model}", "{out}"], ["--model", "{model}", "{out}"]])
def test_cli_takes_options_not_positionals(fused_model: Path, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "repo"
    r = CliRunner().invoke(app, ["export-triton", *(a.format(model=fused_model, out=out) for a in args)])
    assert r.exit_code == 2 and "Missing option" in r.output, r.output
    assert not out.exists()


def test_cli_needs_model_and_output(fused_model: Path) -> None:
    r = CliRunner().invoke(app, ["export-triton", "--model", str(fused_model)])
    assert r.exit_code == 2 and "Missing option '--output'" in r.output, r.output
