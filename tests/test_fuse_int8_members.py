"""Which members enter the INT8 ensemble quantized: those with an INT8 file whose card does not say accuracy
control missed its bar; the rest run as their FP32 file, named with why in the card, the report and the warnings.

Takes the tiny two-member run of ``tests.test_fuse.build_tiny_run`` with its onnxruntime INT8 member files;
a member's INT8 card is rewritten to say what NNCF's accuracy control reached (``cxr.export.quantize``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from cxr.export.onnx_files import read_metadata, set_metadata  # noqa: E402
from cxr.fuse import FuseConfig, FuseResult, fuse  # noqa: E402
from cxr.fuse.members import int8_missed_bar  # noqa: E402
from cxr.session import cpu_session, file_sha256  # noqa: E402
from cxr.spec import CARD_INT8_FLOAT_MEMBERS, INPUT_IMAGE, OUTPUT_MEMBER_PROBABILITIES  # noqa: E402
from tests.test_fuse import build_tiny_run  # noqa: E402

NAMES = ("alpha", "beta")
MISSED = {"max_probability_change": 0.005, "val_mean_probability_change": 0.0143}
MISSED_WHY = "its INT8 accuracy control missed its bar: mean probability change on val 0.0143 > 0.005"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(
        tmp_path_factory.mktemp("int8-members") / "run", dict.fromkeys(NAMES, 32), variants=True
    )


def _members(run: Path, dest: Path, int8: dict[str, dict[str, Any] | None]) -> list[Path]:
    """The FP32 members in ``dest``; per member in ``int8``, its INT8 file with these ``variant_settings``
    (None: the card as the fixture wrote it, without any)."""
    dest.mkdir(parents=True)
    paths = [Path(shutil.copy(run / "onnx" / f"{n}.onnx", dest)) for n in NAMES]
    for name, settings in int8.items():
        path = Path(shutil.copy(run / "onnx" / f"{name}.int8.onnx", dest))
        if settings is not None:
            proto, meta = onnx.load(str(path)), read_metadata(path)
            set_metadata(proto, replace(meta, card={**meta.card, "variant_settings": settings}))
            onnx.save(proto, str(path))
    return paths


def _fuse(run: Path, tmp: Path, int8: dict[str, dict[str, Any] | None]) -> FuseResult:
    members = _members(run, tmp / "onnx", int8)
    cfg = FuseConfig(tmp / "ensemble.onnx", variants=("int8",), bf16_check=False)
    return fuse(members, run / "stack" / "meta.onnx", cfg)


def _member_probabilities(path: Path) -> np.ndarray:
    images = np.random.default_rng(1).integers(0, 256, size=(16, 1, 32, 32), dtype=np.uint8)
    return cpu_session(str(path)).run([OUTPUT_MEMBER_PROBABILITIES], {INPUT_IMAGE: images})[0]


@pytest.mark.parametrize(
    ("beta_int8", "why"),
    [
        ("absent", "no beta.int8.onnx"),
        (MISSED, MISSED_WHY),
    ],
    ids=["no-int8-file", "missed-bar"],
)
def test_a_member_without_a_usable_int8_file_runs_in_fp32(
    run: Path, tmp_path: Path, beta_int8: Any, why: str
) -> None:
    int8 = {"alpha": None} | ({} if beta_int8 == "absent" else {"beta": beta_int8})
    res = _fuse(run, tmp_path, int8)
    built = res.files["int8"]
    assert built.path == tmp_path / "ensemble.int8.onnx" and "int8" not in res.skipped_variants
    card = read_metadata(built.path).card
    assert card[CARD_INT8_FLOAT_MEMBERS] == {"beta": why} == built.float_members
    assert CARD_INT8_FLOAT_MEMBERS not in read_metadata(res.path).card
    entries = {e["name"]: e["onnx_sha256"] for e in card["members"]}  # which file each member entered as
    assert entries == {
        "alpha": file_sha256(tmp_path / "onnx" / "alpha.int8.onnx"),
        "beta": file_sha256(tmp_path / "onnx" / "beta.onnx"),
    }
    assert f"member 'beta' runs in FP32 in the INT8 ensemble: {why}" in res.warnings
    assert not any("'alpha' runs in FP32" in w for w in res.warnings)
    report = json.loads((tmp_path / "fuse_report.json").read_text())
    assert report["files"]["int8"]["float_members"] == {"beta": why}
    assert f"- beta: {why}" in (tmp_path / "fuse_report.md").read_text()
    fp32, q = _member_probabilities(res.path), _member_probabilities(built.path)
    assert np.abs(q[:, 1] - fp32[:, 1]).max() <= 1e-5  # beta: its FP32 file
    assert 1e-4 < np.abs(q[:, 0] - fp32[:, 0]).max() < 0.2  # alpha: quantized, close


@pytest.mark.parametrize(
    ("int8", "why"),
    [
        ({}, "alpha: no alpha.int8.onnx; beta: no beta.int8.onnx"),
        ({"beta": MISSED}, f"alpha: no alpha.int8.onnx; beta: {MISSED_WHY}"),
    ],
    ids=["no-int8-files", "one-missing-one-missed-bar"],
)
def test_no_usable_member_skips_the_int8_ensemble(
    run: Path, tmp_path: Path, int8: dict[str, Any], why: str
) -> None:
    res = _fuse(run, tmp_path, int8)
    assert "int8" not in res.files and not (tmp_path / "ensemble.int8.onnx").exists()
    assert res.skipped_variants == {"int8": f"no member has a usable INT8 file ({why})"}
    assert f"int8 ensemble not built: no member has a usable INT8 file ({why})" in res.warnings


@pytest.mark.parametrize(
    "settings",
    [
        None,  # an older card: no accuracy-control numbers
        {"max_probability_change": 0.005, "val_mean_probability_change": 0.004},  # bar met
        {"max_probability_change": None, "val_mean_probability_change": 0.02},  # accuracy control off
    ],
    ids=["no-settings", "bar-met", "control-off"],
)
def test_every_usable_member_runs_in_int8(run: Path, tmp_path: Path, settings: dict[str, Any] | None) -> None:
    res = _fuse(run, tmp_path, dict.fromkeys(NAMES, settings))
    built = res.files["int8"]
    assert read_metadata(built.path).card[CARD_INT8_FLOAT_MEMBERS] == {} == built.float_members
    assert not any("runs in FP32" in w for w in res.warnings)
    assert "runs these members in FP32" not in (tmp_path / "fuse_report.md").read_text()
    fp32, q = _member_probabilities(res.path), _member_probabilities(built.path)
    assert all(np.abs(q[:, m] - fp32[:, m]).max() > 1e-4 for m in range(len(NAMES)))  # both quantized


@pytest.mark.parametrize(
    ("settings", "missed"),
    [
        ({}, False),
        ({"max_probability_change": 0.005, "val_mean_probability_change": 0.005}, False),  # at the bar
        ({"max_probability_change": 0.005, "val_mean_probability_change": 0.0051}, True),
        ({"max_probability_change": 0.005}, False),  # no change recorded
        ({"max_probability_change": True, "val_mean_probability_change": 2}, False),  # not numbers
    ],
)
def test_missed_bar_needs_both_numbers_and_a_change_above_the_bar(settings: dict, missed: bool) -> None:
    why = int8_missed_bar({"variant_settings": settings})
    assert (why is not None) is missed
    if missed:
        assert (
            why == "its INT8 accuracy control missed its bar: mean probability change on val 0.0051 > 0.005"
        )
