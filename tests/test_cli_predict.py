"""`cxr-predict scan` and `cxr-predict image` through Typer's CliRunner: outputs, exit codes, model lookup."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from cxr.cli.predict import app
from cxr.labels import CLASSES, NOTICE
from cxr.runtime.predictor import Predictor
from tests.onnx_factory import write_gray_pngs

runner = CliRunner()


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    write_gray_pngs(folder, 5)
    return folder


@pytest.fixture(autouse=True)
def _no_user_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own CXR_MODEL or ~/.cache/cxr model."""
    monkeypatch.delenv("CXR_MODEL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_scan_writes_rows_and_a_summary(images: Path, fused_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    res = runner.invoke(app, ["scan", str(images), "--model", str(fused_model), "-o", str(out), "-b", "2"])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert len(rows) == 5 and all(r["label"] in CLASSES and not r["error"] for r in rows)
    assert "images/s" in res.stderr and "provider 'cpu'" in res.stderr and NOTICE in res.stderr
    assert all(c in res.stderr for c in CLASSES) and "failed" in res.stderr
    assert res.stdout == ""


def test_scan_with_unreadable_file_exits_1_and_keeps_going(
    images: Path, fused_model: Path, tmp_path: Path
) -> None:
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_text("hello")
    out = tmp_path / "r.csv"
    res = runner.invoke(app, ["scan", str(images), "-m", str(fused_model), "-o", str(out)])
    assert res.exit_code == 1, res.output
    rows = {Path(r["source"]).name: r for r in _rows(out)}
    assert (
        len(rows) == 7
        and "empty file" in rows["zero.png"]["error"]
        and "not an image" in rows["text.png"]["error"]
    )
    assert sum(1 for r in rows.values() if r["label"]) == 5
    assert "failed: " in res.stderr


def test_scan_rows_on_stdout_without_output(images: Path, fused_model: Path) -> None:
    res = runner.invoke(app, ["scan", str(images), "-m", str(fused_model), "--quiet"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("source,label") and len(lines) == 6
    # --quiet: no progress, no summary; only the model's warnings (said wherever results are)
    assert all(line.startswith("warning: ") for line in res.stderr.splitlines())


def test_scan_json_summary(images: Path, fused_model: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["scan", str(images), "-m", str(fused_model), "-o", str(tmp_path / "r.jsonl"), "--json"]
    )
    assert res.exit_code == 0
    summary = json.loads(res.stdout)
    assert summary["predicted"] == 5 and summary["failed"] == 0 and summary["provider"] == "cpu"
    assert summary["model"]["model_id"] == summary["model_id"] and summary["notice"] == NOTICE
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
def test_retry_failed_predicts_error_rows_again_and_only_them(
    images: Path, fused_model: Path, tmp_path: Path, fmt: str
) -> None:
    folder = tmp_path / "in"
    write_gray_pngs(folder, 2)
    broken = folder / "z_broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / f"r{fmt}"
    assert runner.invoke(app, ["scan", str(folder), "-m", str(fused_model), "-o", str(out)]).exit_code == 1
    write_gray_pngs(tmp_path / "fixed", 1)[0].replace(broken)  # the file was fixed
    plain = runner.invoke(app, ["scan", str(folder), "-m", str(fused_model), "-o", str(out), "--resume"])
    assert plain.exit_code == 0 and "skipped 3" in plain.stderr  # a plain resume keeps the error row
    res = runner.invoke(
        app, ["scan", str(folder), "-m", str(fused_model), "-o", str(out), "--resume", "--retry-failed"]
    )
    assert res.exit_code == 0, res.output
    text = out.read_text().splitlines()
    records = list(csv.DictReader(text)) if fmt == ".csv" else [json.loads(line) for line in text]
    assert len(records) == 3 and all(r["label"] and not r["error"] for r in records)
    assert runner.invoke(app, ["scan", str(folder), "-m", str(fused_model), "--retry-failed"]).exit_code == 2


def test_quiet_keeps_not_assessable(fused_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 200).save(blank)  # one grey level: the gate's narrow_grey_range
    good = write_gray_pngs(tmp_path / "in", 1)[0]
    res = runner.invoke(app, ["image", str(blank), str(good), "-m", str(fused_model), "-q"])
    assert res.exit_code == 0
    first, second = res.stdout.splitlines()
    assert first.split("\t")[2] == "NOT ASSESSABLE (narrow_grey_range)"
    assert len(second.split("\t")) == 2 or "NOT ASSESSABLE" in second


def test_scan_resume(images: Path, fused_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    args = ["scan", str(images), "-m", str(fused_model), "-o", str(out), "--include", "img_00[0-2].png"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args[:-2]).exit_code == 2  # exists: needs --resume or --overwrite
    res = runner.invoke(app, [*args[:-2], "--resume"])
    assert res.exit_code == 0 and "skipped 3 files" in res.stderr
    assert len(_rows(out)) == 5 and len({r["source"] for r in _rows(out)}) == 5


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--resume"], "--resume needs --output"),
        (["--batch-size", "0"], "Invalid value"),
        (["--provider", "rocm"], "Invalid value"),
        (["-o", "r.xlsx"], ".csv or .jsonl"),
    ],
)
def test_usage_errors_exit_2(images: Path, fused_model: Path, extra: list[str], message: str) -> None:
    res = runner.invoke(app, ["scan", str(images), "-m", str(fused_model), *extra])
    assert res.exit_code == 2 and message in res.output


def test_missing_folder_exits_2(fused_model: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["scan", str(tmp_path / "nope"), "-m", str(fused_model)])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_missing_model_says_how_to_get_one(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["scan", str(images)])
    assert res.exit_code == 2
    assert "no model given" in res.stderr and "make demo" in res.stderr and "CXR_MODEL" in res.stderr
    res = runner.invoke(app, ["scan", str(images), "-m", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_model_comes_from_env_then_default_path(
    images: Path, fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXR_MODEL", str(fused_model))
    assert runner.invoke(app, ["image", str(images / "img_000.png")]).exit_code == 0
    monkeypatch.setenv("CXR_MODEL", str(tmp_path / "gone.onnx"))
    res = runner.invoke(app, ["image", str(images / "img_000.png")])
    assert res.exit_code == 2 and "CXR_MODEL" in res.stderr
    monkeypatch.delenv("CXR_MODEL")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "ensemble.onnx").write_bytes(fused_model.read_bytes())
    res = runner.invoke(app, ["image", str(images / "img_000.png"), "--json"])
    assert res.exit_code == 2 and "no model given" in res.stderr  # the demo model is never picked implicitly


def test_provider_fallback_warns_and_strict_fails(images: Path, fused_model: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot be provoked")
    out = tmp_path / "r.csv"
    res = runner.invoke(
        app, ["scan", str(images), "-m", str(fused_model), "-o", str(out), "--provider", "cuda"]
    )
    assert res.exit_code == 0
    assert "warning: asked for provider 'cuda'" in res.stderr and "onnxruntime-gpu" in res.stderr
    assert {r["provider"] for r in _rows(out)} == {"cpu"}
    res = runner.invoke(
        app,
        [
            "image",
            str(images / "img_000.png"),
            "-m",
            str(fused_model),
            "--provider",
            "cuda",
            "--strict-provider",
        ],
    )
    assert res.exit_code == 2 and "error: asked for provider 'cuda'" in res.stderr


def test_image_human_output(images: Path, fused_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    res = runner.invoke(app, ["image", str(images / "img_000.png"), str(bad), "-m", str(fused_model)])
    assert res.exit_code == 1
    assert "predicted:" in res.stdout and "member alpha" in res.stdout and "error:" in res.stdout
    assert NOTICE in res.stdout and "provider 'cpu'" in res.stdout


def test_image_json_output(images: Path, fused_model: Path) -> None:
    files = [str(images / f"img_00{i}.png") for i in range(3)]
    res = runner.invoke(app, ["image", *files, "-m", str(fused_model), "--json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert (
        [p["source"] for p in doc["predictions"]] == files and doc["failed"] == 0 and doc["notice"] == NOTICE
    )
    p = doc["predictions"][0]
    assert (
        p["label"] in CLASSES
        and p["provider"] == "cpu"
        and set(p["member_probabilities"]) == {"alpha", "beta"}
    )
    assert doc["model"]["provider"] == "cpu"


def test_help_documents_the_default_model_paths() -> None:
    res = runner.invoke(app, ["scan", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "CXR_MODEL" in text and "~/.cache/cxr/ensemble.onnx" in text
    assert "never the demo model implicitly" in " ".join(text.replace("│", " ").split())


def test_real_dicoms_through_the_cli(shared_data: Path, fused_model: Path) -> None:
    from pydicom.pixels import get_decoder

    folder = shared_data / "dicom"
    res = runner.invoke(app, ["scan", str(folder), "-m", str(fused_model), "--quiet"])
    rows = list(csv.DictReader(res.stdout.splitlines()))
    errors = {Path(r["source"]).name: r["error"] for r in rows if r["error"]}
    lossless_ok = get_decoder("1.2.840.10008.1.2.4.70").is_available
    assert len(rows) == 5 and set(errors) == (
        set() if lossless_ok else {"fodicom_CR-ModalitySequenceLUT_dental.dcm"}
    )
    assert res.exit_code == (0 if lossless_ok else 1)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda d: (d / "README.md").write_text("# cxr\nmake demo\n") and d / "README.md", "is a text file"),
        (lambda d: (d / "run").mkdir() or (d / "run" / "ensemble.onnx").write_bytes(b"\x08") and d / "run",
         "is a folder, not a model file; it holds ensemble.onnx"),
    ],
    ids=["readme", "folder"],
)  # fmt: skip
def test_wrong_model_path_hints_point_the_right_way(
    images: Path, tmp_path: Path, make: Any, said: str
) -> None:
    res = runner.invoke(app, ["image", str(images / "img_000.png"), "-m", str(make(tmp_path))])
    assert res.exit_code == 2 and said in res.stderr and "opset" not in res.stderr
    assert "Traceback" not in res.output


def test_model_that_is_not_onnx_exits_2(images: Path, tmp_path: Path, member_model: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not a protobuf")
    res = runner.invoke(app, ["image", str(images / "img_000.png"), "-m", str(junk)])
    assert res.exit_code == 2 and "cannot load" in res.stderr
    res = runner.invoke(app, ["image", str(images / "img_000.png"), "-m", str(member_model), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["model"]["input_format"] == "float_normalized"


def test_progress_bar_shows_rate_and_eta() -> None:
    import io

    from cxr.progress import Progress

    now = [0.0]
    buf = io.StringIO()
    bar = Progress(10, "scan", buf, clock=lambda: now[0], log_interval=0.0)
    now[0] = 2.0
    bar.update(4)
    assert buf.getvalue() == "scan [========>           ] 4/10 00:02<00:03 2.0 img/s\n"
    now[0] = 5.0
    bar.update(6)
    bar.close()
    last = buf.getvalue().splitlines()[-1]
    assert last == "scan [====================] 10/10 00:05<00:00 2.0 img/s", buf.getvalue()


@pytest.mark.parametrize("command", ["image", "scan"])
def test_dicom_out_writes_sr_and_sc_for_dicom_inputs_only(
    fused_model: Path, tmp_path: Path, command: str
) -> None:
    import pydicom

    from cxr.dicom import read_sr
    from tests.dicom_factory import make_source

    folder = tmp_path / "in"
    write_gray_pngs(folder, 1)
    (folder / "chest.dcm").write_bytes(make_source())
    out = tmp_path / "dicom"
    files = sorted(str(p) for p in folder.iterdir())
    args = ["image", *files] if command == "image" else ["scan", str(folder), "-o", str(tmp_path / "r.csv")]
    res = runner.invoke(app, [*args, "-m", str(fused_model), "--dicom-out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert "1 SR + secondary capture pair(s)" in res.stderr and "1 input(s) not DICOM" in res.stderr
    written = [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]
    assert sorted(ds.Modality for ds in written) == ["OT", "SR"]
    source = pydicom.dcmread(folder / "chest.dcm")
    assert {ds.StudyInstanceUID for ds in written} == {source.StudyInstanceUID}
    assert {str(ds.PatientName) for ds in written} == {str(source.PatientName)}
    sr = next(ds for ds in written if ds.Modality == "SR")
    content = read_sr(sr)
    direct = Predictor.from_path(fused_model).predict(folder / "chest.dcm")
    assert content.label == direct.label
    assert content.probabilities == pytest.approx(direct.probabilities, abs=1e-6)
