"""scripts/gpu_check.py dry-runs on a CPU-only machine: it records the fallback instead of hiding it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("allow_cpu", [True, False])
def test_gpu_check_reports_fallback_on_cpu(tmp_path: Path, allow_cpu: bool) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a GPU build of onnxruntime: run scripts/gpu_check.sh for real")
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out), "--size", "32"]
    cmd += ["--iterations", "2", "--images", "4", "--batch-size", "2"] + (
        ["--allow-cpu"] if allow_cpu else []
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == (0 if allow_cpu else 1), proc.stderr[-2000:]
    report = json.loads(out.read_text())
    status = {c["name"]: c for c in report["configs"]}
    assert status["cpu"]["status"] == "ok" and status["cpu"]["latency"][1]["batch"] == 2
    for name in ("cuda", "tensorrt-fp32", "tensorrt-fp16"):
        assert status[name]["status"] == "fallback" and status[name]["providers_used"] == ["cpu"]
        assert "asked for provider" in status[name]["warnings"][0]
        assert status[name]["max_abs_diff_vs_cpu"] == 0.0
    assert report["passed"] is False and report["dry_run"] is allow_cpu
    assert report["machine"]["available_providers"] == ["cpu"]
