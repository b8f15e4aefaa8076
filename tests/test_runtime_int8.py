"""INT8 at run time, on made-up CPUs and made-up records: auto picks the verified INT8 file beside the model for
this CPU kind (OpenVINO, else onnxruntime's CPU), int8 is refused with the model, the kind and the fix where it
is not verified or the file is not the one checked; the heatmap twin stays FP32; cxr-predict, the API and
cxr-bench say which precision ran."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from cxr.errors import ProviderError
from cxr.onnx_header import read_onnx_header
from cxr.precision import choose_precision, int8_verdict, plan_int8
from cxr.runtime import Predictor, PredictorConfig
from cxr.runtime.locate import with_heatmap_twin
from cxr.session import SessionConfig, cpu_session, create_session, file_sha256, int8_backends
from cxr.spec import INT8_RECORDS, META_VERIFIED_PRECISIONS
from tests.onnx_factory import make_fused_model

OV_RECORD, ORT_RECORD = INT8_RECORDS
FLAGS = {  # made-up CPUs, one per kind
    "amx": {"avx2", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"},
    "avx512_vnni": {"avx2", "avx512f", "avx512_vnni"},
    "avx2": {"avx2", "fma"},
}
OK = {"accepted": True, "agreement": 0.995, "sensitivity_change_points": {"COVID": 0.4}, "reason": "within"}
BAD = {
    "accepted": False,
    "agreement": 0.97,
    "sensitivity_change_points": {"COVID": 2.5},
    "reason": "flips 15",
}
SIZE = 32


def write_records(path: Path, records: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[META_VERIFIED_PRECISIONS] = json.dumps(records)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def record(sha: str, kinds: dict[str, Any]) -> dict[str, Any]:
    bar = {"agreement": 0.99, "sensitivity_points": 1.0}
    return {
        "file": "fused.int8.onnx",
        "sha256": sha,
        "bar": bar,
        "split": "test",
        "images": 500,
        "kinds": kinds,
    }


def make_pair(folder: Path, ov: dict[str, Any], ort: dict[str, Any], sha: str | None = None) -> Path:
    """fused.onnx and a stand-in fused.int8.onnx (other weights, card precision int8) with the records, as
    `cxr fuse` writes them: into the INT8 file first (it cannot name its own sha256), then into the FP32 file."""
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = make_fused_model(folder / "fused.onnx", size=SIZE)
    int8 = make_fused_model(folder / "fused.int8.onnx", size=SIZE, seed=1, card_extra={"precision": "int8"})
    write_records(int8, {OV_RECORD: record("not-its-own", ov), ORT_RECORD: record("not-its-own", ort)})
    digest = sha or file_sha256(int8)
    write_records(fp32, {OV_RECORD: record(digest, ov), ORT_RECORD: record(digest, ort)})
    return fp32


@pytest.fixture()
def cpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cpu(kind)`` makes this machine look like a CPU of that kind (its made-up flags), with no ISA cap."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def as_kind(kind: str) -> None:
        monkeypatch.setattr("cxr.cpu_kind.cpu_flags", lambda *a: frozenset(FLAGS[kind]))

    return as_kind


def probabilities(info: Any) -> np.ndarray:
    batch = np.random.default_rng(3).integers(0, 256, (2, 1, SIZE, SIZE), dtype=np.uint8)
    return np.asarray(info.session.run(["probabilities"], {"image": batch})[0])


def file_probabilities(path: Path) -> np.ndarray:
    return probabilities(type("Info", (), {"session": cpu_session(path)})())


# (this CPU's kind, onnxruntime_int8's kinds, asked, file that runs or None for a refusal, words said)
CASES = [
    ("avx2", {"avx2": OK}, "auto", "fused.int8.onnx", "onnxruntime precision auto -> int8 for fused.onnx"),
    ("avx2", {"avx2": OK}, "int8", "fused.int8.onnx", ""),
    ("avx2", {"avx2": OK}, "fp32", "fused.onnx", ""),
    ("avx512_vnni", {"avx2": OK}, "auto", "fused.onnx", "no entry for this CPU's kind 'avx512_vnni'"),
    ("avx512_vnni", {"avx2": OK}, "int8", None, "kind 'avx512_vnni'"),
    ("amx", {"avx2": OK, "amx": BAD}, "auto", "fused.onnx", "check refused it: flips 15"),
    ("amx", {"avx2": OK, "amx": BAD}, "int8", None, "flips 15"),
    ("avx2", {"avx2": {**OK, "agreement": 0.98}}, "auto", "fused.onnx", "under its bar"),
    (
        "avx2",
        {"avx2": {**OK, "sensitivity_change_points": {"COVID": -1.5}}},
        "int8",
        None,
        "sensitivity moved",
    ),
]


@pytest.mark.parametrize(("kind", "kinds", "asked", "runs", "words"), CASES)
def test_onnxruntime_runs_int8_only_where_this_cpu_kind_was_verified(
    tmp_path: Path, cpu: Any, kind: str, kinds: dict[str, Any], asked: str, runs: str | None, words: str
) -> None:
    cpu(kind)
    fp32 = make_pair(tmp_path, ov={}, ort=kinds)
    cfg = SessionConfig("cpu", precision=asked, threads=1)
    if runs is None:
        with pytest.raises(ProviderError) as err:
            create_session(fp32, cfg)
        assert "refusing to run fused.onnx in int8" in err.value.message and words in err.value.message
        assert "re-fuse" in (err.value.hint or "") and "--precision auto" in (err.value.hint or "")
        return
    info = create_session(fp32, cfg)
    assert info.model is not None and info.model.name == runs and info.providers == ("cpu",)
    assert info.precision == ("int8" if runs.endswith(".int8.onnx") else None)
    assert words in " ".join(info.warnings) and bool(info.warnings) == (asked == "auto")
    np.testing.assert_allclose(probabilities(info), file_probabilities(tmp_path / runs), atol=1e-6)


@pytest.mark.parametrize(
    ("change", "words"),
    [("sha", "is not the file its onnxruntime_int8 record checked"), ("missing", "is not beside fused.onnx")],
)
def test_an_int8_file_that_is_not_the_one_checked_never_runs(
    tmp_path: Path, cpu: Any, change: str, words: str
) -> None:
    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK}, sha="0" * 64 if change == "sha" else None)
    if change == "missing":
        (tmp_path / "fused.int8.onnx").unlink()
    info = create_session(fp32, SessionConfig("cpu", threads=1))
    assert info.precision is None and info.model == fp32 and words in " ".join(info.warnings)
    with pytest.raises(ProviderError, match=words):
        create_session(fp32, SessionConfig("cpu", precision="int8"))


def test_a_model_without_int8_records_runs_as_before(fused_model: Path, cpu: Any) -> None:
    cpu("amx")
    info = create_session(fused_model, SessionConfig("cpu", threads=1))
    assert (info.precision, info.warnings, info.model) == (None, (), fused_model)
    with pytest.raises(ProviderError, match="no INT8 record and no INT8 file"):
        create_session(fused_model, SessionConfig("cpu", precision="int8"))


@pytest.mark.parametrize(
    ("where", "asked", "runs", "words"),
    [
        ("beside", "int8", "int8", ""),  # its sha256 is checked against the FP32 file's record
        ("alone", "int8", "int8", ""),
        ("alone", "auto", "int8", "sha256 unchecked"),
        ("unverified", "auto", "int8", "runs as given, unverified on this avx2 CPU"),
        ("unverified", "int8", None, "no entry for this CPU's kind 'avx2'"),
    ],
)
def test_an_int8_file_given_as_the_model(
    tmp_path: Path, cpu: Any, where: str, asked: str, runs: str | None, words: str
) -> None:
    cpu("avx2")
    make_pair(tmp_path / "run", ov={}, ort={"amx": OK} if where == "unverified" else {"avx2": OK})
    model = tmp_path / "run" / "fused.int8.onnx"
    if where == "alone":
        model = Path(shutil.copy(model, tmp_path / "fused.int8.onnx"))
    cfg = SessionConfig("cpu", precision=asked, threads=1)
    if runs is None:
        with pytest.raises(ProviderError, match=words):
            create_session(model, cfg)
        return
    info = create_session(model, cfg)
    assert info.precision == runs and info.model == model and words in " ".join(info.warnings)


def test_gpu_providers_never_run_int8(tmp_path: Path, cpu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={"avx2": OK}, ort={"avx2": OK})
    with pytest.raises(ProviderError, match="cannot run precision 'int8'"):
        SessionConfig("cuda", precision="int8")
    monkeypatch.setattr("cxr.session.available_providers", lambda: ("cuda", "cpu"))
    assert int8_backends("auto") == () and int8_backends("cuda") == ()
    with pytest.raises(ProviderError, match="no CPU provider INT8 is verified on"):
        plan_int8(fp32, "auto", "int8", int8_backends("auto"))
    assert plan_int8(fp32, "auto", "auto", int8_backends("auto")).model == fp32  # the GPU runs the FP32 file


@pytest.mark.parametrize(
    ("int8", "requested", "bf16", "runs", "words"),
    [
        ((True, "checked"), "auto", True, "int8", "auto -> int8 for m.onnx: checked"),
        (
            (False, "not on this kind"),
            "auto",
            None,
            "fp32",
            "auto -> fp32 for m.onnx: not int8 (not on this kind)",
        ),
        (
            (False, "not on this kind"),
            "auto",
            False,
            "fp32",
            "not int8 (not on this kind); this CPU has no BF16",
        ),
        (
            (False, "moved {'COVID': 2.5}"),
            "auto",
            True,
            "fp32",
            "not int8 (moved {'COVID': 2.5}); the model's",
        ),
        (None, "auto", None, "fp32", None),  # onnxruntime, no INT8 question: nothing to say
        ((True, "checked"), "fp32", True, "fp32", None),
    ],
)
def test_auto_is_the_fastest_verified_and_says_why(
    int8: tuple[bool, str] | None, requested: str, bf16: bool | None, runs: str, words: str | None
) -> None:
    choice = choose_precision(requested, cpu_bf16=bf16, props={}, model_name="m.onnx", int8=int8)
    assert choice.precision == runs
    assert choice.note == words if words is None else words in (choice.note or "")


def test_the_verdict_reads_the_record_of_its_backend(tmp_path: Path) -> None:
    fp32 = make_pair(tmp_path, ov={"amx": OK}, ort={"amx": BAD})
    props = read_onnx_header(fp32).metadata
    ov_ok, ort_ok = (int8_verdict(fp32, props, b, "amx") for b in ("openvino", "cpu"))
    assert ov_ok is not None and ov_ok[0] and "openvino_int8, amx CPU" in ov_ok[1]
    assert ort_ok is not None and not ort_ok[0] and "flips 15" in ort_ok[1]


BF16_OK = {"accepted": True, "agreement": 1.0, "images": 200, "bar": 0.99, "reason": "test record"}
BF16_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # a Zen 4 or Cooper Lake


# (members the INT8 graph keeps in FP32, this CPU's flags, ISA cap, provider, asked, file planned)
BF16_OVER_INT8 = [
    (["xception"], BF16_FLAGS, None, "openvino", "auto", "fused.onnx"),  # BF16 runs every member faster
    ([], BF16_FLAGS, None, "openvino", "auto", "fused.int8.onnx"),  # every member INT8: INT8
    (["xception"], FLAGS["avx512_vnni"], None, "openvino", "auto", "fused.int8.onnx"),  # no BF16 CPU
    (["xception"], BF16_FLAGS, "AVX2", "openvino", "auto", "fused.int8.onnx"),  # capped: no BF16 kernels
    (["xception"], BF16_FLAGS, None, "openvino", "int8", "fused.int8.onnx"),  # asked for: as asked
    (["xception"], BF16_FLAGS, None, "auto", "auto", "fused.int8.onnx"),  # auto = onnxruntime: no BF16 there
]


@pytest.mark.parametrize(("in_float", "flags", "cap", "provider", "asked", "runs"), BF16_OVER_INT8)
def test_auto_prefers_verified_bf16_to_an_int8_graph_with_fp32_members(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_float: list[str],
    flags: set[str],
    cap: str | None,
    provider: str,
    asked: str,
    runs: str,
) -> None:
    ok = {"avx512_vnni": OK, "avx2": OK}
    fp32 = make_pair(tmp_path, ov=ok, ort=ok)
    props = read_onnx_header(fp32).metadata
    records = json.loads(props[META_VERIFIED_PRECISIONS])
    for key in INT8_RECORDS:
        records[key]["float_members"] = in_float
    write_records(fp32, {**records, "openvino_bf16": BF16_OK})
    monkeypatch.setattr("cxr.cpu_kind.cpu_flags", lambda *a: frozenset(flags))
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    plan = plan_int8(fp32, provider, asked, int8_backends(provider) if provider == "auto" else [provider])
    assert plan.model.name == runs
    if runs == "fused.onnx":  # planned for BF16: INT8 said no, and why
        assert plan.int8 is not None and not plan.int8[0] and "runs xception in FP32" in plan.int8[1]
        choice = choose_precision(
            "auto", cpu_bf16=True, props=plan.props or {}, model_name=fp32.name, int8=plan.int8
        )
        assert choice.precision == "bf16" and "xception in FP32" in (choice.note or "")


# ----------------------------------------------------------------------------- OpenVINO, and the fallback


def test_openvino_runs_int8_with_fp32_float_ops(tmp_path: Path, cpu: Any) -> None:
    pytest.importorskip("openvino")
    cpu("amx")
    fp32 = make_pair(tmp_path, ov={"amx": OK}, ort={"amx": BAD})
    info = create_session(fp32, SessionConfig("openvino", threads=1))
    assert (info.precision, info.providers, info.model) == (
        "int8",
        ("openvino",),
        tmp_path / "fused.int8.onnx",
    )
    hint = info.session._compiled.get_property("INFERENCE_PRECISION_HINT")  # type: ignore[union-attr]
    assert hint.get_type_name() == "f32"  # not BF16, even on a BF16 CPU: the check ran in FP32
    assert any("openvino precision auto -> int8 for fused.onnx" in w for w in info.warnings)
    np.testing.assert_allclose(probabilities(info), file_probabilities(info.model), atol=1e-5)
    assert create_session(fp32, SessionConfig("cpu", threads=1)).precision is None  # its own record refused


@pytest.mark.parametrize("openvino_installed", [True, False])
def test_provider_auto_on_a_cpu_prefers_openvino_and_falls_back_to_onnxruntime(
    tmp_path: Path, cpu: Any, monkeypatch: pytest.MonkeyPatch, openvino_installed: bool
) -> None:
    if openvino_installed:
        pytest.importorskip("openvino")
    else:
        monkeypatch.setitem(sys.modules, "openvino", None)  # any import of openvino now raises ImportError
    monkeypatch.setattr("cxr.session.available_providers", lambda: ("cpu",))
    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={"avx2": OK}, ort={"avx2": OK})
    info = create_session(fp32, SessionConfig("auto", threads=1))
    assert info.precision == "int8" and info.model == tmp_path / "fused.int8.onnx"
    assert info.providers[0] == ("openvino" if openvino_installed else "cpu") and info.requested == "auto"


def test_openvino_kind_follows_the_isa_cap_and_onnxruntime_ignores_it(
    tmp_path: Path, cpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    cpu("amx")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AMX machine standing in for a clinic PC
    fp32 = make_pair(tmp_path, ov={"avx2": OK}, ort={"avx2": OK})
    assert create_session(fp32, SessionConfig("openvino", threads=1)).precision == "int8"
    with pytest.raises(ProviderError, match="kind 'amx'"):  # onnxruntime's kernels still run AMX
        create_session(fp32, SessionConfig("cpu", precision="int8"))


# ----------------------------------------------------------------------------- heatmaps, Predictor, CLI, API


def test_the_heatmap_twin_stays_fp32(tmp_path: Path, cpu: Any) -> None:
    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK})
    twin = Path(shutil.copy(fp32, tmp_path / "fused.heatmaps.onnx"))  # it carries the records too
    auto = PredictorConfig(session=SessionConfig("cpu", threads=1))
    path, _ = with_heatmap_twin(fp32, auto)
    assert path == twin
    info = create_session(twin, auto.session)  # no fused.heatmaps.int8.onnx: the twin runs FP32
    assert info.precision is None and "fused.heatmaps.int8.onnx is not beside" in " ".join(info.warnings)
    int8 = PredictorConfig(session=SessionConfig("cpu", precision="int8"))
    with pytest.raises(ProviderError, match="no heatmap outputs") as err:
        with_heatmap_twin(fp32, int8, required=True)
    assert "--precision auto" in (err.value.hint or "")
    assert with_heatmap_twin(fp32, int8)[0] == fp32  # optional (DICOM node): INT8 runs, no heatmap


def test_predictions_and_describe_say_int8(tmp_path: Path, cpu: Any, gray_pngs: list[Path]) -> None:
    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK})
    predictor = Predictor.from_path(fp32, PredictorConfig(session=SessionConfig("cpu", threads=1)))
    described = predictor.describe()
    assert predictor.model_path == tmp_path / "fused.int8.onnx"
    assert predictor.model_id == file_sha256(tmp_path / "fused.int8.onnx")[:16]
    assert described["precision"] == "int8" and described["provider"] == "cpu"
    assert any("auto -> int8" in w for w in described["provider_warnings"])
    assert {(p.precision, p.provider) for p in predictor.predict(gray_pngs)} == {("int8", "cpu")}


@pytest.mark.parametrize(
    ("kind", "args", "code", "words"),
    [
        ("avx2", ["--json"], 0, '"precision": "int8"'),
        ("amx", ["--precision", "int8"], 2, "refusing to run fused.onnx in int8 on this CPU (kind 'amx')"),
        ("avx2", ["--precision", "int8", "--heatmap"], 2, "no heatmap outputs"),
    ],
)
def test_cxr_predict(
    tmp_path: Path, cpu: Any, gray_pngs: list[Path], kind: str, args: list[str], code: int, words: str
) -> None:
    from cxr.cli.predict import app

    cpu(kind)
    fp32 = make_pair(tmp_path / "m", ov={}, ort={"avx2": OK})
    shutil.copy(fp32, tmp_path / "m" / "fused.heatmaps.onnx")
    res = CliRunner().invoke(
        app, ["image", str(gray_pngs[0]), "-m", str(fp32), "--provider", "cpu", "--threads", "1", *args]
    )
    assert res.exit_code == code, res.output
    assert words in (res.stdout if code == 0 else res.stderr) and "Traceback" not in res.output
    if code == 2:
        assert "hint:" in res.stderr
    else:  # the choice and its reason, once, on stderr
        assert res.stderr.count("precision: onnxruntime precision auto -> int8 for fused.onnx") == 1


def test_the_api_says_int8_and_why(tmp_path: Path, cpu: Any) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app
    from cxr.serve.config import ServeConfig
    from tests.test_serve_app import wait_ready

    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK})
    with TestClient(create_app(ServeConfig(model=fp32, session=SessionConfig("cpu", threads=1)))) as client:
        wait_ready(client)
        info, ready = client.get("/v1/model").json(), client.get("/readyz").json()
    assert (info["precision"], info["file_name"], ready["precision"]) == ("int8", "fused.int8.onnx", "int8")
    assert info["sha256_prefix"] == file_sha256(tmp_path / "fused.int8.onnx")[:16]
    assert "precision auto -> int8 for fused.onnx" in ready["message"]


@pytest.mark.parametrize(
    ("precision", "runs", "heatmaps"),
    [("int8", "fused.int8.onnx", False), ("auto", "fused.heatmaps.onnx", True)],
)
def test_the_dicom_node_trades_the_heatmap_for_int8_only_when_asked(
    tmp_path: Path, cpu: Any, precision: str, runs: str, heatmaps: bool
) -> None:
    pytest.importorskip("pynetdicom")
    from cxr.dicom.forward import parse_destination
    from cxr.dicom.node import NodeConfig, open_predictor

    cpu("avx2")
    fp32 = make_pair(tmp_path, ov={}, ort={"avx2": OK})
    shutil.copy(fp32, tmp_path / "fused.heatmaps.onnx")
    dest = parse_destination("PACS@127.0.0.1:4242")
    cfg = NodeConfig(model=fp32, forward=dest, spool=tmp_path / "spool", provider="cpu", precision=precision)
    predictor = open_predictor(cfg)
    assert predictor.model_path.name == runs
    assert (predictor.cfg.model_id is not None) == heatmaps  # the twin carries the plain model's id
    assert predictor.info.precision == ("int8" if precision == "int8" else None)


def test_cxr_listen_reads_cxr_precision() -> None:
    from cxr.cli.main import app

    res = CliRunner().invoke(app, ["listen", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "CXR_PRECISION" in res.stdout and "int8" in res.stdout


def test_dicom_out_names_the_int8_file_that_ran(tmp_path: Path, cpu: Any) -> None:
    pydicom = pytest.importorskip("pydicom")
    from cxr.cli.predict import app
    from cxr.dicom import read_sr
    from tests.dicom_factory import make_source

    cpu("avx2")
    fp32 = make_pair(tmp_path / "m", ov={}, ort={"avx2": OK})
    (tmp_path / "chest.dcm").write_bytes(make_source())
    args = ["image", str(tmp_path / "chest.dcm"), "-m", str(fp32), "--provider", "cpu", "--threads", "1"]
    res = CliRunner().invoke(app, [*args, "--dicom-out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    (sr,) = [ds for ds in map(pydicom.dcmread, (tmp_path / "out").glob("*.dcm")) if ds.Modality == "SR"]
    content = read_sr(sr)
    int8 = tmp_path / "m" / "fused.int8.onnx"
    assert content.model_sha256 == file_sha256(int8)
    direct = Predictor.from_path(int8, provider="cpu").predict(tmp_path / "chest.dcm")
    assert content.probabilities == pytest.approx(direct.probabilities, abs=1e-6)


def make_qdq(fp32: Path, dst: Path) -> Path:
    """A real INT8 file: onnxruntime's static QDQ quantization of ``fp32`` (per-channel), cxr's metadata kept."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(4)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [
                {"image": rng.integers(0, 256, (4, 1, SIZE, SIZE), dtype=np.uint8)} for _ in range(4)
            ]

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.left.pop() if self.left else None

    quantize_static(
        str(fp32), str(dst), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    props = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    card = json.loads(props["cxr.card"])
    props["cxr.card"] = json.dumps({**card, "precision": "int8"})
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def test_a_real_qdq_file_runs_alike_on_openvino_and_onnxruntime(tmp_path: Path, cpu: Any) -> None:
    pytest.importorskip("openvino")
    cpu("avx512_vnni")
    fp32 = make_fused_model(tmp_path / "fused.onnx", size=SIZE)
    int8 = make_qdq(fp32, tmp_path / "fused.int8.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node)
    entry = {"avx512_vnni": OK}
    write_records(
        fp32, {OV_RECORD: record(file_sha256(int8), entry), ORT_RECORD: record(file_sha256(int8), entry)}
    )
    ov_info = create_session(fp32, SessionConfig("openvino", threads=1))
    ort_info = create_session(fp32, SessionConfig("cpu", threads=1))
    assert (ov_info.precision, ort_info.precision) == ("int8", "int8")
    assert ov_info.model == ort_info.model == int8
    got_ov, got_ort = probabilities(ov_info), probabilities(ort_info)
    np.testing.assert_allclose(got_ov, got_ort, atol=2e-2)  # two INT8 kernels, one quantized graph
    np.testing.assert_allclose(got_ort, file_probabilities(fp32), atol=2e-2)  # and close to FP32
