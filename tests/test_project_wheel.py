"""The wheel carries the demo's configs, so `cxr demo` works from an installed wheel, not only from a clone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr.demo.config import PACKAGED_CONFIGS, default_config

REPO = Path(__file__).resolve().parents[1]
NAMES = ("demo", "paper", "ci", "rehearse")


@pytest.mark.parametrize("name", NAMES)
def test_outside_a_clone_the_packaged_config_is_used(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    path = default_config(name)
    assert path == PACKAGED_CONFIGS / f"{name}.yaml" and path.is_file()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{name}.yaml").write_text("run_dir: mine\n")
    assert default_config(name) == Path("configs") / f"{name}.yaml"  # a user's own copy wins


def test_the_repository_configs_are_the_packaged_ones() -> None:
    assert (REPO / "configs").resolve() == PACKAGED_CONFIGS


@pytest.mark.slow
def test_the_wheel_holds_the_configs(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so the build never writes build/ or egg-info into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cxr", src / "cxr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    proc = subprocess.run([*pip, str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = dist.glob("cxr_toolkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"cxr/configs/{n}.yaml" for n in NAMES} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)
