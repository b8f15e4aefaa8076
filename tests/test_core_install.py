"""The project installs with its core dependencies and the `cpu` extra only (no torch) into a fresh virtual
environment, and `cxr-predict scan` works there. Slow (~20-60 s: pip resolves numpy, onnxruntime, Pillow,
pydicom, typer)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.onnx_factory import write_gray_pngs

REPO = Path(__file__).resolve().parents[1]


def _pip_supports_python_option() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    try:
        major, minor = (int(x) for x in proc.stdout.split()[1].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (22, 3)


@pytest.mark.slow
def test_core_only_install_runs_cxr_predict(fused_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so the build never writes build/ or egg-info into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cxr", src / "cxr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CXR_MODEL")}
    if _pip_supports_python_option():  # this pip installs into the fresh venv: skips ensurepip (~15 s)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
    proc = subprocess.run(
        [*pip, "install", "--quiet", "--no-compile", "--disable-pip-version-check", f"{src}[cpu]"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    py = venv / "bin" / "python"
    for forbidden in ("torch", "timm", "sklearn", "onnx", "fastapi"):
        probe = subprocess.run(
            [str(py), "-c", f"import {forbidden}"], capture_output=True, env=env, check=False
        )
        assert probe.returncode != 0, f"{forbidden} is importable in a core-only install"

    write_gray_pngs(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "broken.png").write_text("not an image")
    out = tmp_path / "results.csv"
    run = subprocess.run(
        [
            str(venv / "bin" / "cxr-predict"),
            "scan",
            str(tmp_path / "imgs"),
            "--model",
            str(fused_model),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 1, run.stderr[-3000:]  # one broken file: exit code 1, the rest predicted
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and sum(bool(r["label"]) for r in rows) == 4
    assert "images/s" in run.stderr and "Decision support only" in run.stderr
