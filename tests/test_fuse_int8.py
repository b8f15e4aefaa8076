"""The NNCF INT8 build and its verdict on the fused graph: accepted on a tiny trained run, refused with the member
named when one member's INT8 file is broken, the records' layout, and "not meaningful" on uninformative outputs.

Takes a tiny two-member run whose members are trained (``tests.test_fuse.build_tiny_run``), its members' INT8
files made by ``cxr.export.quantize.make_int8`` (NNCF) from the run's own train/val images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from cxr.cpu_kind import CPU_KINDS, cpu_kind  # noqa: E402
from cxr.export.inputs import InputPool  # noqa: E402
from cxr.export.onnx_files import read_metadata  # noqa: E402
from cxr.export.quantize import Int8Config, make_int8  # noqa: E402
from cxr.export.report import RunExportConfig  # noqa: E402
from cxr.fuse import FuseConfig, fuse, run_members  # noqa: E402
from cxr.fuse.int8_check import (  # noqa: E402
    ONNXRUNTIME_RECORD,
    OPENVINO_RECORD,
    Int8Bar,
    kind_entry,
    not_meaningful,
)
from cxr.session import cpu_session, file_sha256  # noqa: E402
from cxr.spec import INT8_RECORDS, META_VERIFIED_PRECISIONS, OUTPUT_MEMBER_PROBABILITIES, OUTPUT_PROBABILITIES  # noqa: E402
from tests.test_fuse import build_tiny_run  # noqa: E402

try:
    import openvino  # noqa: F401

    HAS_OPENVINO = True
except ImportError:
    HAS_OPENVINO = False

RECORD_KEYS = {"file", "sha256", "bar", "split", "images", "kinds", "float_members"}
ENTRY_KEYS = {"accepted", "agreement", "sensitivity_change_points", "reason"}


def _member_int8(run: Path, name: str, *, scale: float = 1.0, accuracy_control: bool = True) -> None:
    """``<name>.int8.onnx`` by NNCF from the run's train (calibration) and val images; ``scale`` != 1 calibrates
    on images scaled out of range, which breaks the member (its activations' ranges are wrong)."""
    src = run / "onnx" / f"{name}.onnx"
    spec = read_metadata(src).preprocess
    pool = InputPool(RunExportConfig(run_dir=run))
    calib, source = pool.calibration_inputs(spec)
    val, sources = pool.variant_inputs(spec)
    res = make_int8(
        src,
        Int8Config(
            calibration=(calib * scale).astype(np.float32),
            calibration_source=source,
            verify_inputs=val,
            sources=sources,
            accuracy_control=accuracy_control,
            # the tiny run's operating points sit at p ~ 0.999 (its meta-learner is uncalibrated: < 100 val
            # predictions), where a 1e-3 change moves a sensitivity; fast bias correction stays under it here
            fast_bias_correction=True,
            min_agreement=0.99
            if scale == 1.0
            else 0.01,  # the broken one is written anyway: fuse must refuse it
            threads=1,
        ),
    )
    assert res.usable, res.reason
    assert res.settings["quantizer"].startswith("nncf") and res.settings["calibration_source"] == "train"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build_tiny_run(
        tmp_path_factory.mktemp("int8") / "run", {"alpha": 32, "beta": 32}, train_steps=20, per_class=30
    )
    for name in ("alpha", "beta"):
        _member_int8(run, name)
    return run


def _fuse(run: Path, out: Path, **options: object):  # noqa: ANN202
    members, meta = run_members(run)
    options = {"report": False, **options}
    cfg = FuseConfig(out, variants=("int8",), run_dir=run, bf16_check=False, ood=False, **options)  # type: ignore[arg-type]
    return fuse(members, meta, cfg)


def _records(path: Path) -> dict:
    return json.loads(
        dict(cpu_session(str(path)).get_modelmeta().custom_metadata_map)[META_VERIFIED_PRECISIONS]
    )


@pytest.mark.slow
def test_int8_of_a_trained_run_is_accepted_and_recorded_in_both_files(trained_run: Path) -> None:
    res = _fuse(trained_run, trained_run / "ensemble.onnx", report=True)
    int8 = res.files["int8"].path
    assert (
        res.report_md is not None
        and f"- {cpu_kind()}: accepted: top-1 agreement" in res.report_md.read_text()
    )
    assert int8 == trained_run / "ensemble.int8.onnx"
    names = [OPENVINO_RECORD, ONNXRUNTIME_RECORD] if HAS_OPENVINO else [ONNXRUNTIME_RECORD]
    assert sorted(res.verified_precisions) == sorted(names) and set(names) <= set(INT8_RECORDS)
    in_fp32, in_int8 = _records(res.path), _records(int8)
    for name in names:
        rec = in_fp32[name]
        assert set(rec) == RECORD_KEYS and rec == res.verified_precisions[name]
        assert rec["file"] == "ensemble.int8.onnx" and rec["split"] == "test" and rec["float_members"] == []
        assert rec["sha256"] == file_sha256(int8) == res.files["int8"].sha256  # the INT8 file as it is now
        assert rec["bar"] == {"agreement": 0.99, "sensitivity_points": 1.0}
        assert rec["images"] == 36  # the tiny run's test split (30% of 4 x 30)
        assert {k: v for k, v in in_int8[name].items() if k != "sha256"} == {
            k: v for k, v in rec.items() if k != "sha256"
        }
        entry = rec["kinds"][cpu_kind()]
        assert set(entry) == ENTRY_KEYS
        assert entry["accepted"] is True and entry["agreement"] >= 0.99, entry["reason"]
        assert max(map(abs, entry["sensitivity_change_points"].values())) <= 1.0
    if HAS_OPENVINO and CPU_KINDS.index(cpu_kind()) < CPU_KINDS.index("avx2"):
        assert "avx2" in in_fp32[OPENVINO_RECORD]["kinds"]  # the clinic-PC stand-in, capped oneDNN
    assert res.files["fp32"].sha256 == file_sha256(res.path)


@pytest.mark.slow
def test_a_broken_member_is_refused_and_named(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _member_int8(run, "beta", scale=30.0, accuracy_control=False)
    res = _fuse(run, run / "ensemble.onnx")
    rec = res.verified_precisions[ONNXRUNTIME_RECORD]
    entry = rec["kinds"][cpu_kind()]
    assert entry["accepted"] is False and entry["reason"].startswith("refused")
    assert "moved most: beta (top-1 agreement" in entry["reason"]
    assert any("INT8 is not offered" in w and "beta" in w for w in res.warnings)


@pytest.mark.slow
def test_a_member_whose_accuracy_control_missed_its_bar_runs_in_fp32_and_the_rest_is_accepted(
    trained_run: Path, tmp_path: Path
) -> None:
    """The broken beta above, its card saying its accuracy control missed a 0.005 bar: the INT8 graph takes its
    FP32 file instead, names it, and the verdict (which reads only the INT8 members' settings) accepts."""
    from dataclasses import replace

    from cxr.export.onnx_files import set_metadata
    from cxr.spec import CARD_INT8_FLOAT_MEMBERS

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _member_int8(run, "beta", scale=30.0, accuracy_control=False)
    path = run / "onnx" / "beta.int8.onnx"
    proto, meta = onnx.load(str(path)), read_metadata(path)
    settings = {**meta.card["variant_settings"], "max_probability_change": 0.005}
    assert settings["val_mean_probability_change"] > 0.005  # measured on val by make_int8
    set_metadata(proto, replace(meta, card={**meta.card, "variant_settings": settings}))
    onnx.save(proto, str(path))
    res = _fuse(run, run / "ensemble.onnx")
    int8 = res.files["int8"]
    [why] = read_metadata(int8.path).card[CARD_INT8_FLOAT_MEMBERS].values()
    assert int8.float_members == {"beta": why} and why.startswith("its INT8 accuracy control missed its bar")
    assert f"{settings['val_mean_probability_change']:g} > 0.005" in why
    entry = res.verified_precisions[ONNXRUNTIME_RECORD]["kinds"][cpu_kind()]
    assert entry["accepted"] is True, entry["reason"]
    assert _records(res.path)[ONNXRUNTIME_RECORD]["float_members"] == ["beta"]  # auto weighs it against BF16


@pytest.mark.slow
def test_the_verdict_can_be_skipped(trained_run: Path, tmp_path: Path) -> None:
    res = _fuse(trained_run, tmp_path / "ensemble.onnx", int8_check=False)
    assert "int8" in res.files and res.verified_precisions == {}


@pytest.mark.slow
def test_random_weight_members_get_not_meaningful_and_no_percentage(
    trained_run: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from cxr.export.onnx_files import set_metadata

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    member = run / "onnx" / "beta.onnx"
    proto, meta = onnx.load(str(member)), read_metadata(member)
    set_metadata(
        proto, replace(meta, card={**meta.card, "random_weights": True})
    )  # as paper_members.py writes
    onnx.save(proto, str(member))
    res = _fuse(run, run / "ensemble.onnx")
    assert sorted(res.verified_precisions) == sorted(INT8_RECORDS)
    for rec in res.verified_precisions.values():
        assert rec["sha256"] == file_sha256(res.files["int8"].path) and rec["images"] == 0
        [entry] = rec["kinds"].values()
        assert entry == {
            "accepted": False,
            "agreement": None,
            "sensitivity_change_points": {},
            "reason": "not meaningful: beta has random weights (a speed benchmark)",
        }


@pytest.mark.slow
def test_unlabelled_images_never_accept(trained_run: Path, tmp_path: Path) -> None:
    members, meta = run_members(trained_run)
    cfg = FuseConfig(
        tmp_path / "ensemble.onnx",
        variants=("int8",),
        check_images=trained_run / "data",
        bf16_check=False,
        ood=False,
    )
    rec = fuse(members, meta, cfg).verified_precisions[ONNXRUNTIME_RECORD]
    entry = rec["kinds"][cpu_kind()]
    assert rec["split"].startswith("unlabelled images") and rec["images"] == 120  # every image of the folder
    assert entry["accepted"] is False and "no labelled test images" in entry["reason"]
    assert entry["agreement"] is not None and 0.0 <= entry["agreement"] <= 1.0


def _probs(top: float, n: int = 20, k: int = 3) -> np.ndarray:
    p = np.full((n, k), (1 - top) / (k - 1))
    p[np.arange(n), np.arange(n) % k] = top
    return p


@pytest.mark.parametrize(
    ("probs", "labels", "why"),
    [
        (_probs(0.34), np.arange(20) % 3, "near-uniform"),  # random weights: a hair above 1/3
        (_probs(0.9), (np.arange(20) + 1) % 3, "no better than guessing"),  # confident and wrong
        (_probs(0.9), np.arange(20) % 3, None),  # a trained model: meaningful
    ],
)
def test_agreement_is_not_meaningful_on_uninformative_outputs(
    probs: np.ndarray, labels: np.ndarray, why: str | None
) -> None:
    got = not_meaningful(probs, labels)
    assert (got is None) if why is None else (why in str(got))
    members = np.stack([probs, probs], axis=1)
    outputs = {OUTPUT_PROBABILITIES: probs, OUTPUT_MEMBER_PROBABILITIES: members}
    entry = kind_entry(outputs, outputs, labels, ["a", "b", "c"], {}, ["m1", "m2"], Int8Bar(), {})
    assert set(entry) == ENTRY_KEYS
    if why is None:
        assert entry["accepted"] is True and entry["agreement"] == 1.0
    else:
        assert entry["accepted"] is False and entry["agreement"] is None
        assert entry["reason"].startswith("not meaningful")


@pytest.mark.parametrize(("shift", "accepted"), [(0.0, True), (0.3, False)])
def test_a_moved_operating_point_is_refused_even_when_top1_agrees(shift: float, accepted: bool) -> None:
    labels = np.arange(30) % 3
    ref = _probs(0.8, n=30)
    got = ref.copy()
    got[:, 0] -= shift * (labels == 0)  # class a's positives fall below its threshold 0.6; top-1 stays
    got[:, 1] += shift * (labels == 0)
    got[labels == 0, 0] = np.maximum(got[labels == 0, 0], got[labels == 0, 1] + 0.01)
    outs = lambda p: {OUTPUT_PROBABILITIES: p, OUTPUT_MEMBER_PROBABILITIES: p[:, None]}  # noqa: E731
    entry = kind_entry(outs(ref), outs(got), labels, ["a", "b", "c"], {"a": 0.6}, ["m"], Int8Bar(), {})
    assert entry["agreement"] == 1.0 and entry["accepted"] is accepted
    assert entry["sensitivity_change_points"]["a"] == (0.0 if accepted else -100.0)
