"""`cxr export RUN_DIR` / `cxr verify RUN_DIR` end to end on real checkpoints of tiny timm models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from cxr.cli.main import app  # noqa: E402
from cxr.data.manifest import SplitConfig, build_manifest  # noqa: E402
from cxr.data.synthetic import SynthConfig, synthesize  # noqa: E402
from cxr.export.onnx_files import onnx_sha256, read_metadata  # noqa: E402
from cxr.labels import CLASSES, NOTICE  # noqa: E402
from cxr.spec import PreprocessSpec  # noqa: E402
from cxr.train.backbones import create_backbone  # noqa: E402
from cxr.train.checkpoint import CheckpointInfo, read_checkpoint_info, save_checkpoint, versions  # noqa: E402

MEMBERS = {"alpha": "test_resnet", "beta": "test_convnext"}
SIZE = 32


def make_run(root: Path, members: dict[str, str] = MEMBERS, manifest: bool = True) -> Path:
    run = root / "run"
    for name, timm_name in members.items():
        model = create_backbone(timm_name, len(CLASSES), seed=0)
        info = CheckpointInfo(
            name=name,
            timm_name=timm_name,
            classes=CLASSES,
            preprocess=PreprocessSpec.square(SIZE),
            metrics={"accuracy": 0.5, "macro_f1": 0.4},
            sha256="",
            epoch=2,
            config={},
            versions=versions(),
        )
        save_checkpoint(run / "members" / name, "best", model, info)
    if manifest:
        data = synthesize(SynthConfig(root / "data", per_class=4, seed=0, size=48))
        build_manifest(SplitConfig(data.root, run / "manifest.csv", seed=0, fractions=(0.5, 0.5, 0.0)))
    return run


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("export_run"))
    # untrained tiny members on 8 synthetic images: the INT8 bar itself is tested in test_export_quantize;
    # here every variant must be written, so the bar is lowered below what random weights can promise
    code, out = invoke(
        "export",
        str(run),
        "--variants",
        "fp16,int8",
        "--max-val",
        "8",
        "--random",
        "4",
        "--min-agreement",
        "0.75",
    )
    assert code == 0, out
    return run, out


def test_export_writes_members_variants_and_reports(exported_run: tuple[Path, str]) -> None:
    run, out = exported_run
    onnx_dir = run / "onnx"
    for name, timm_name in MEMBERS.items():
        fp32 = onnx_dir / f"{name}.onnx"
        card = read_metadata(fp32).card
        info = read_checkpoint_info(run / "members" / name)
        assert card["member"] == name and card["timm_name"] == timm_name
        assert card["checkpoint_sha256"] == info.sha256 and card["val_metrics"] == info.metrics
        assert card["opset"] == 17 and card["flops_per_image"] > 0 and card["exporter"] == "torchscript"
        for precision in ("fp16", "int8"):
            vcard = read_metadata(onnx_dir / f"{name}.{precision}.onnx").card
            assert vcard["precision"] == precision and vcard["fp32_sha256"] == onnx_sha256(fp32)
    report = json.loads((onnx_dir / "export_report.json").read_text())
    assert report["passed"] and report["failed"] == [] and report["notice"] == NOTICE
    assert report["inputs"]["verify"] == {"source": "val", "images": 8, "note": None}
    assert report["inputs"]["calibration"]["source"] == "train"
    parity = report["members"][0]["parity"]
    assert parity["n"] == 12 and parity["inputs"] == {"val": 8, "random": 4} and parity["max_abs"] <= 1e-4
    assert all(v["usable"] for m in report["members"] for v in m["variants"])
    md = (onnx_dir / "export_report.md").read_text()
    assert "| alpha | test_resnet | torchscript | 17 |" in md and NOTICE in md
    assert "alpha" in out and "PASS" in out and "usable" in out


def test_verify_passes_then_fails_loudly_on_a_perturbed_graph(
    exported_run: tuple[Path, str], tmp_path: Path
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(exported_run[0], run)
    code, out = invoke("verify", str(run), "--max-val", "4", "--random", "2", "--min-agreement", "0.75")
    assert code == 0, out
    assert (run / "onnx" / "verify_report.md").is_file()

    path = run / "onnx" / "alpha.onnx"
    proto = onnx.load(str(path))
    (bias,) = [t for t in proto.graph.initializer if list(t.dims) == [len(CLASSES)]]
    arr = onnx.numpy_helper.to_array(bias).copy()
    arr[2] += np.float32(0.5)
    bias.CopyFrom(onnx.numpy_helper.from_array(arr, bias.name))
    onnx.save(proto, str(path))
    code, out = invoke("verify", str(run), "--max-val", "4", "--random", "2", "--min-agreement", "0.75")
    assert code == 1, out
    assert "verify failed for alpha:" in out
    report = json.loads((run / "onnx" / "verify_report.json").read_text())
    assert report["failed"] == ["alpha"]  # beta still passes
    alpha = next(m for m in report["members"] if m["name"] == "alpha")
    assert "differs from pytorch" in alpha["error"]
    assert all("stale" in v["reason"] for v in alpha["variants"])  # made from the old alpha.onnx


def test_failed_member_is_not_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr.export import run_export
    from cxr.export.verify import VerifyReport

    run = make_run(tmp_path, {"alpha": "test_resnet"})

    def failing(*args: object, **kwargs: object) -> VerifyReport:
        return VerifyReport(
            "alpha", "pytorch fp32", "onnx fp32", 4, 0.2, 1.0, 0.5, 2, 0, False, ("top-1 50%",)
        )

    monkeypatch.setattr(run_export, "verify_onnx", failing)
    code, out = invoke("export", str(run), "--max-val", "4", "--random", "0")
    assert code == 1 and "alpha" in out
    assert not (run / "onnx" / "alpha.onnx").exists() and (run / "onnx" / "alpha.onnx.rejected").exists()
    assert json.loads((run / "onnx" / "export_report.json").read_text())["failed"] == ["alpha"]


@pytest.mark.parametrize("flags", [(), ("--fast-bias-correction",)])
def test_without_manifest_synthetic_images_are_used_and_said(tmp_path: Path, flags: tuple[str, ...]) -> None:
    run = make_run(tmp_path, {"alpha": "test_resnet"}, manifest=False)
    code, out = invoke("export", str(run), "--variants", "int8", "--random", "2", "--max-calib", "4", *flags)
    assert code == 0, out
    inputs = json.loads((run / "onnx" / "export_report.json").read_text())["inputs"]
    assert inputs["verify"]["source"] == "synthetic" and inputs["calibration"]["source"] == "synthetic"
    assert "no manifest.csv" in inputs["note"]
    settings = read_metadata(run / "onnx" / "alpha.int8.onnx").card["variant_settings"]
    assert settings["calibration_source"] == "synthetic" and settings["quantizer"].startswith("nncf")
    # full bias correction by default; where NNCF cannot apply it, fast is used and the card says why
    assert settings["fast_bias_correction"] == (bool(flags) or "full_bias_correction_failed" in settings)
    assert not (flags and "full_bias_correction_failed" in settings)  # fast asked: full never tried


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("bare"), {"alpha": "test_resnet"}, manifest=False)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--members", "alhpa"), "did you mean alpha"),
        (("--variants", "int4"), "unknown variant"),
        (("--opset", "16"), "opset 16"),
        (("--exporter", "dynamo"), "opset 18"),
    ],
)
def test_bad_options_exit_2_with_the_fix(bare_run: Path, args: tuple[str, ...], needle: str) -> None:
    code, out = invoke("export", str(bare_run), *args)
    assert code == 2 and needle in out, out


def test_missing_or_untrained_run_dir(tmp_path: Path) -> None:
    code, out = invoke("export", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in out
    (tmp_path / "empty").mkdir()
    code, out = invoke("export", str(tmp_path / "empty"))
    assert code == 2 and "no trained members" in out and "cxr train" in out
    code, out = invoke("verify", str(tmp_path / "empty"))
    assert code == 2


def test_verify_before_export_says_how(bare_run: Path) -> None:
    code, out = invoke("verify", str(bare_run))
    assert code == 2 and "cxr export" in out


def test_checkpoint_from_another_version(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"alpha": "test_resnet"}, manifest=False)
    meta = run / "members" / "alpha" / "best.json"
    d = json.loads(meta.read_text())
    d["format_version"] = 99
    meta.write_text(json.dumps(d))
    code, out = invoke("export", str(run))
    assert code == 2 and "format" in out and "re-train" in out
