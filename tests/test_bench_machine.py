"""cxr-bench machine info: peak GFLOP/s overrides and lookup per precision, per-row peak memory, busy-CPU
note, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cxr.bench.machine import (
    MachineInfo,
    PeakMemoryProbe,
    busy_note,
    machine_info,
    parse_peaks,
    resolve_peak_overrides,
)
from cxr.bench.peak import PeakFigure
from cxr.errors import ConfigError


@pytest.mark.parametrize(
    ("option", "env", "expected"),
    [
        (None, None, ({}, "none")),
        (None, "180", ({"fp32": 180.0}, "CXR_PEAK_GFLOPS")),
        (None, "fp32=180, int8=700", ({"fp32": 180.0, "int8": 700.0}, "CXR_PEAK_GFLOPS")),
        (100.0, "180", ({"fp32": 100.0}, "option")),
        ("bf16=400", "180", ({"bf16": 400.0}, "option")),
        ({"int8": 9.5}, None, ({"int8": 9.5}, "option")),
    ],
)
def test_peak_overrides(
    option: object, env: str | None, expected: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    if env is None:
        monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    else:
        monkeypatch.setenv("CXR_PEAK_GFLOPS", env)
    assert resolve_peak_overrides(option) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0", "positive"),
        ("-1", "positive"),
        ("fast", "not a number"),
        ("fp64=3", "unknown precision"),
        (",", "empty"),
    ],
)
def test_bad_peak_is_refused(text: str, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_peaks(text)
    monkeypatch.setenv("CXR_PEAK_GFLOPS", text)
    with pytest.raises(ConfigError, match="CXR_PEAK_GFLOPS"):
        resolve_peak_overrides(None)


def test_overrides_win_and_the_rest_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    info = machine_info("fp32=123", peak_size=32)
    assert (info.peak_gflops, info.peak_source) == (123.0, "option")
    assert info.peak("fp32") == PeakFigure("fp32", 123.0, "option", None, 0, "option")
    int8 = info.peak("int8")
    assert int8 is not None and int8.source == "measured" and int8.size == 32 and int8.gflops
    assert "fp32 123" in info.summary() and "INT8" in info.peaks_line()


@pytest.mark.parametrize(
    ("precision", "gpu", "expected"),
    [("fp32", False, 100.0), ("bf16", False, 300.0), ("int8", False, 700.0), ("fp16", False, None)]
    + [("bf16", True, None), ("int8", True, 50.0)],
)
def test_each_precision_has_its_own_peak(precision: str, gpu: bool, expected: float | None) -> None:
    """A measured (CPU) peak never serves a GPU row; an override does."""
    base = machine_info(measure_peak=False)
    peaks = {
        "fp32": PeakFigure("fp32", 100.0, "onnxruntime", 2, 64).to_dict(),
        "bf16": PeakFigure("bf16", 300.0, "openvino", 2, 64).to_dict(),
        "int8": PeakFigure("int8", 700.0 if not gpu else 50.0, "option", None, 0, "option").to_dict(),
    }
    info = dataclasses.replace(base, peaks=peaks)
    assert info.peak_for(precision, gpu=gpu) == expected


def test_a_report_of_an_older_cxr_keeps_its_fp32_peak() -> None:
    old = machine_info(measure_peak=False).to_dict()
    old.pop("peaks"), old.pop("openvino")
    old.update(peak_gflops=234.0, peak_source="option")
    info = MachineInfo.from_dict(old)
    assert info.peak_for("fp32") == 234.0 and info.peak_for("bf16") is None


def test_machine_info_round_trip() -> None:
    info = machine_info(10.0, peak_size=16)
    assert info.logical_cores >= info.usable_cores >= 1
    assert info.onnxruntime and "CPUExecutionProvider" in info.onnxruntime_providers
    assert MachineInfo.from_dict(info.to_dict()) == info
    assert "GFLOP/s" in info.summary()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_is_per_row() -> None:
    probe = PeakMemoryProbe()
    big = np.ones(150 * 2**20, dtype=np.uint8)  # 150 MiB, then freed before the next row
    probe.start()
    first = probe.read()
    del big
    probe.start()
    second = probe.read()
    assert first.scope == second.scope
    if first.scope == "row":
        assert first.peak_rss_mb - second.peak_rss_mb > 100  # the reset forgot the freed 150 MiB


@pytest.mark.parametrize(
    ("load", "cores", "busy"),
    [((0.1, 0.1, 0.1), 2, False), ((0.6, 1, 1), 2, True), ((3.0, 1, 1), 16, False), ((), 2, False)],
)
def test_busy_note(load: tuple[float, ...], cores: int, busy: bool) -> None:
    info = dataclasses.replace(machine_info(measure_peak=False), load_average=load, usable_cores=cores)
    note = busy_note(info)
    assert (note is not None) == busy
    if note:
        assert "load average" in note and "quiet machine" in note
