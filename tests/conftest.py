"""Shared fixtures: tiny ONNX models with cxr metadata, synthetic images, the real sample's location."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.onnx_factory import make_fused_model, make_member_model, write_gray_pngs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample images beside the repo; tests that use them skip when it is absent."""
    if not (SHARED_DATA / "radiography-dev").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fused_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fused_model(tmp_path_factory.mktemp("models") / "tiny_fused.onnx")


@pytest.fixture(scope="session")
def member_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_member_model(tmp_path_factory.mktemp("models") / "tiny_member.onnx")


@pytest.fixture()
def gray_pngs(tmp_path: Path) -> list[Path]:
    return write_gray_pngs(tmp_path / "pngs", 6)
