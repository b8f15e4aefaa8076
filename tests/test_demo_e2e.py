"""`cxr demo` end to end on a tiny config: every stage runs, every artefact exists, a rerun skips all."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from cxr.cli.main import app
from cxr.labels import NOTICE
from cxr.spec import ModelMetadata

CONFIG = Path(__file__).parent / "configs" / "demo_smoke.yaml"
STAGES = ["data", "split", "train", "export", "stack", "fuse", "evaluate", "scan", "bench"]

pytestmark = pytest.mark.slow


def _demo_args(run: Path) -> list[str]:
    small = "--per-class 16 --bench-iterations 2 --threads 2".split()
    return ["demo", str(run), "--config", str(CONFIG), *small]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("demo") / "run"
    res = CliRunner().invoke(app, _demo_args(run))
    assert res.exit_code == 0, res.output
    return run, res.output


def test_every_stage_ran_and_left_its_artefacts(demo_run: tuple[Path, str]) -> None:
    run, output = demo_run
    state = json.loads((run / "stages.json").read_text())
    assert list(state) == STAGES
    for rel in [
        "manifest.csv",
        "config.yaml",
        "onnx/export_report.md",
        "stack/meta.json",
        "ensemble.onnx",
        "fuse_report.md",
        "eval/report.md",
        "eval/report.json",
        "predict/results.csv",
        "bench/bench.json",
        "bench/bench.md",
        "README.md",
    ]:
        assert (run / rel).exists(), rel
    for m in ("resnet", "efficientnet", "convnext"):
        assert (run / "members" / m / "predictions" / "test.csv").is_file()
        assert (run / "onnx" / f"{m}.onnx").is_file()
    assert "stacking" in output and NOTICE in output


def test_console_shows_every_verification_verdict(demo_run: tuple[Path, str]) -> None:
    _, output = demo_run
    for m in ("resnet", "efficientnet", "convnext"):
        fp32 = [
            line for line in output.splitlines() if line.strip().startswith(f"{m} ") and "ONNX fp32" in line
        ]
        assert len(fp32) == 1 and "max |dp|" in fp32[0] and "top-1 agreement" in fp32[0], output
        assert fp32[0].endswith("-> PASS"), fp32[0]
        int8 = [line for line in output.splitlines() if line.strip().startswith(f"{m} ") and "INT8:" in line]
        assert len(int8) == 1 and "bar 99%" in int8[0], output
        assert int8[0].endswith(("-> accepted", "-> refused (not used)")), int8[0]
    assert "3 of 3 members match PyTorch" in output
    assert "fused fp32 vs separate members + meta-learner (batches 1, 8)" in output
    assert "fused fp32 vs PyTorch members + scikit-learn meta-learner on" in output
    assert (
        output.index("== export: running") < output.index("ONNX fp32 vs PyTorch") < output.index("== stack")
    )
    assert (
        output.index("== fuse: running")
        < output.index("fused fp32 vs separate")
        < output.index("== evaluate")
    )


def test_the_fused_model_is_self_describing(demo_run: tuple[Path, str]) -> None:
    run, _ = demo_run
    sess = ort.InferenceSession(str(run / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert meta.input_format == "uint8_gray"
    assert meta.card["member_order"] == ["convnext", "efficientnet", "resnet"]
    outputs = ["probabilities", "label", "member_probabilities", "ood_score"]
    assert [o.name for o in sess.get_outputs()] == outputs
    assert meta.card["ood"]["threshold"] > 0 and meta.card["ood"]["n_train"] > 0


def test_scan_rows_cover_the_test_split(demo_run: tuple[Path, str]) -> None:
    run, _ = demo_run
    with (run / "manifest.csv").open() as f:
        n_test = sum(1 for r in csv.DictReader(f) if r["split"] == "test")
    with (run / "predict" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_test > 0
    assert all(r["error"] == "" and r["label"] for r in rows)


def test_index_links_reports_and_says_synthetic(demo_run: tuple[Path, str]) -> None:
    run, _ = demo_run
    index = (run / "README.md").read_text()
    assert "SYNTHETIC" in index and NOTICE in index
    assert "[`eval/report.md`](eval/report.md)" in index and "[`ensemble.onnx`](ensemble.onnx)" in index


def test_rerun_skips_every_stage_and_force_redoes_from_there(demo_run: tuple[Path, str]) -> None:
    run, _ = demo_run
    base = _demo_args(run)
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    assert res.output.count("up to date, skipped") == len(STAGES)
    assert res.output.count("verdicts when it last ran:") == 2  # export and fuse replay their checks
    assert "fused fp32 vs PyTorch members + scikit-learn meta-learner" in res.output
    res = CliRunner().invoke(app, [*base, "--force", "scan"])
    assert res.exit_code == 0, res.output
    assert "== scan: running" in res.output and "== bench: running" in res.output
    assert "== evaluate: up to date, skipped" in res.output


def test_the_demo_reports_its_heatmaps(demo_run: tuple[Path, str]) -> None:
    run, output = demo_run
    assert "heatmaps:" in output
    grid = run / "heatmaps" / "grid.png"
    if "heatmaps: not drawn" not in output:
        assert grid.is_file() and "heatmaps/grid.png" in (run / "README.md").read_text()
