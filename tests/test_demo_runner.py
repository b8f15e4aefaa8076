"""Resumable demo stages: skip when nothing changed, rerun what depends on a change, --force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cxr.demo.runner import Stage, run_stages
from cxr.errors import ConfigError


def _pipeline(tmp_path: Path, calls: list[str], param: int = 1) -> list[Stage]:
    src = tmp_path / "src.txt"
    a_out = tmp_path / "a.txt"
    b_out = tmp_path / "b.txt"

    def run_a() -> dict:
        calls.append("a")
        a_out.write_text(src.read_text().upper())
        return {"n": 1}

    def run_b() -> dict:
        calls.append("b")
        b_out.write_text(a_out.read_text() * 2)
        return {"n": 2}

    return [
        Stage("a", run_a, params={"p": param}, inputs=lambda: [src], outputs=lambda: [a_out]),
        Stage("b", run_b, inputs=lambda: [a_out], outputs=lambda: [b_out]),
    ]


def test_second_run_skips_everything(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    recs = run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    assert calls == ["a", "b"] and all(r.ran for r in recs)
    recs = run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    assert calls == ["a", "b"] and not any(r.ran for r in recs)
    assert recs[1].summary == {"n": 2}  # cached summary is returned


@pytest.mark.parametrize("change", ["param", "input", "deleted_output"])
def test_a_change_reruns_the_stage_and_what_follows(tmp_path: Path, change: str) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    calls.clear()
    param = 1
    if change == "param":
        param = 2
    elif change == "input":
        (tmp_path / "src.txt").write_text("longer input")
    else:
        (tmp_path / "b.txt").unlink()
    run_stages(_pipeline(tmp_path, calls, param), tmp_path / "run")
    assert calls == (["b"] if change == "deleted_output" else ["a", "b"])


def test_force(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    calls.clear()
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run", force=["b"])
    assert calls == ["b"]
    with pytest.raises(ConfigError, match="no such stage"):
        run_stages(_pipeline(tmp_path, calls), tmp_path / "run", force=["nope"])


# ------------------------------------------------------------------------------------------------
# Verification verdicts on the demo's console (cxr.demo.verdicts) and their replay when a stage is skipped
# ------------------------------------------------------------------------------------------------


def _verify_report(name: str, agreement: float, max_abs: float, min_top1: float, atol: float | None) -> Any:
    from cxr.export.verify import VerifyReport

    n = 32
    disagree = round((1.0 - agreement) * n)
    passed = (atol is None or max_abs <= atol) and 1.0 - disagree / n >= min_top1
    reasons = () if passed else (f"top-1 agreement {1 - disagree / n:.2%} < {min_top1:.2%}",)
    return VerifyReport(
        name, "pytorch", "onnx", n, max_abs, max_abs * 10, 1.0 - disagree / n, disagree, 0, passed, reasons,
        atol, min_top1,
    )  # fmt: skip


def test_export_verdicts_name_parity_and_each_int8_decision(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cxr.demo.verdicts import export_verdicts
    from cxr.export.quantize import VariantResult
    from cxr.export.run_export import MemberReport, RunExportResult

    def member(name: str, int8_agreement: float) -> MemberReport:
        int8 = _verify_report(f"{name} int8", int8_agreement, 0.02, 0.99, None)
        variant = VariantResult(
            "int8", tmp_path / f"{name}.int8.onnx", int8.passed, None if int8.passed else "not usable: low",
            1.0, 10, "sha", int8,
        )  # fmt: skip
        parity = _verify_report(name, 1.0, 3e-7, 1.0, 1e-4)
        return MemberReport(name, name, tmp_path / f"{name}.onnx", parity=parity, variants=(variant,))

    failed = MemberReport(
        "vgg19", "vgg19", None, parity=_verify_report("vgg19", 0.5, 0.3, 1.0, 1e-4), error="differs"
    )
    result = RunExportResult(
        "export", (member("densenet121", 1.0), member("xception", 0.9375), failed), tmp_path / "r.json",
        tmp_path / "r.md",
    )  # fmt: skip
    text = "\n".join(export_verdicts(result))
    assert "densenet121  ONNX fp32 vs PyTorch on 32 inputs: max |dp| 3.0e-07 <= 0.0001" in text
    assert "top-1 agreement 100.0% -> PASS" in text
    assert "densenet121  INT8: top-1 agreement with FP32 100.0% >= bar 99%" in text
    assert "-> accepted" in text
    assert "xception     INT8: top-1 agreement with FP32 93.8% < bar 99% on 32 images" in text
    assert "-> refused (not used)" in text
    assert "INT8 refused for xception: it runs in FP32 inside the INT8 ensemble" in text
    assert "vgg19        ONNX fp32 vs PyTorch on 32 inputs: max |dp| 3.0e-01" in text and "-> FAIL" in text
    assert "2 of 3 members match PyTorch; FAILED: vgg19" in text


def test_fuse_verdicts_name_both_parity_checks(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from cxr.demo.verdicts import fuse_verdicts
    from cxr.fuse import FusedFile, FuseResult
    from cxr.fuse.verify import EndToEndReport, ParityReport

    parity = ParityReport((1, 8), 2e-7, 4e-7, True, 1e-5)
    fp32 = FusedFile("fp32", tmp_path / "ensemble.onnx", "sha", 10, False, True, "", parity)
    e2e = EndToEndReport(32, True, (), 1.5e-6, {"a": 1.0})
    result = FuseResult(
        tmp_path / "ensemble.onnx", (32, 32), ("a", "b"), {"fp32": fp32},
        {"int8": "member variant(s) missing: b.int8.onnx"}, e2e, None, (),
    )  # fmt: skip
    lines = fuse_verdicts(result)
    assert lines == [
        "  fused fp32 vs separate members + meta-learner (batches 1, 8): max |dp| 4.0e-07 <= 1e-05, "
        "labels identical -> PASS",
        "  fused int8: not built (member variant(s) missing: b.int8.onnx)",
        "  fused fp32 vs PyTorch members + scikit-learn meta-learner on 32 test images: top-1 identical, "
        "max |dp| 1.5e-06 -> PASS",
    ]
    bad = FusedFile(
        "fp32", tmp_path / "e.onnx", "sha", 10, False, True, "", ParityReport((1,), 1e-3, 0, False, 1e-5)
    )
    assert fuse_verdicts(FuseResult(tmp_path, (32, 32), ("a",), {"fp32": bad}, {}, None, None, ()))[
        0
    ].endswith("max |dp| 1.0e-03 > 1e-05, labels DIFFER -> FAIL")


def test_demo_echoes_verdicts_when_a_stage_runs_and_replays_them_when_it_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxr.demo.pipeline as pipeline
    from cxr.demo.config import DemoConfig

    out = tmp_path / "artefact.txt"

    def fake_stages(cfg: DemoConfig, echo: Callable[[str], None]) -> list[Stage]:
        def run() -> dict[str, Any]:
            out.write_text("x")
            echo("  m  ONNX fp32 vs PyTorch on 8 inputs: max |dp| 1.0e-07 -> PASS")
            return {"verdicts": ["  m  ONNX fp32 vs PyTorch on 8 inputs: max |dp| 1.0e-07 -> PASS"]}

        return [Stage("export", run, outputs=lambda: [out])]

    monkeypatch.setattr(pipeline, "build_stages", fake_stages)
    cfg = DemoConfig(run_dir=tmp_path / "run")
    for expected in ("running", "up to date, skipped"):
        printed: list[str] = []
        res = pipeline.run_demo(cfg, echo=printed.append)
        assert printed[0] == f"== export: {expected}"
        assert "  m  ONNX fp32 vs PyTorch on 8 inputs: max |dp| 1.0e-07 -> PASS" in printed
    assert "   verdicts when it last ran:" in printed
    index = res.index.read_text()
    assert "## Verification" in index and "max |dp| 1.0e-07 -> PASS" in index
