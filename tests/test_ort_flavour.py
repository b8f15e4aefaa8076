"""Exactly one onnxruntime build per install: the check at the first session, and pip's own resolution."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.errors import ProviderError
from cxr.ort_flavour import FLAVOURS, INSTALL_HINT, check_flavours, installed_flavours

REPO = Path(__file__).resolve().parents[1]


def test_no_build_is_refused_with_the_install_command() -> None:
    with pytest.raises(ProviderError, match="no onnxruntime is installed") as e:
        check_flavours(())
    assert e.value.hint == INSTALL_HINT


@pytest.mark.parametrize(
    "flavours, fix",
    [
        (
            (("onnxruntime", "1.22.0"), ("onnxruntime-gpu", "1.22.0")),
            "onnxruntime onnxruntime-gpu && pip install -e '.[gpu]' in a clone of cxr",
        ),
        (
            (("onnxruntime", "1.22.0"), ("onnxruntime-openvino", "1.21.0")),
            "onnxruntime onnxruntime-openvino && pip install -e '.[cpu]' in a clone of cxr",
        ),
    ],
)
def test_two_builds_are_refused_naming_both(flavours: tuple[tuple[str, str], ...], fix: str) -> None:
    with pytest.raises(ProviderError, match="2 onnxruntime builds are installed") as e:
        check_flavours(flavours)
    assert all(f"{n} {v}" in e.value.message for n, v in flavours) and e.value.hint.endswith(fix)


def test_this_environment_has_exactly_one() -> None:
    (only,) = installed_flavours()
    assert only[0] in FLAVOURS
    check_flavours(installed_flavours())


@pytest.mark.slow
@pytest.mark.parametrize(
    "extras, wanted",
    [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu"), ("cpu,serve,openvino", "onnxruntime")],
)
def test_pip_resolves_one_build_per_install(extras: str, wanted: str, tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so metadata generation never writes egg-info into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cxr", src / "cxr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--no-build-isolation",
    ]
    proc = subprocess.run(
        [*cmd, "--only-binary", ":all:", "--report", str(report), f"{src}[{extras}]"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode != 0 and (
        "No matching distribution" in proc.stderr or "connection" in proc.stderr.lower()
    ):
        pytest.skip(f"the package index cannot resolve here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert names & set(FLAVOURS) == {wanted}
    assert not names & {"torch", "timm", "scikit-learn", "onnx"}
