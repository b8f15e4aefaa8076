"""cxr-bench machine info: GEMM peaks given per precision, per-row peak memory, busy-CPU note, round trip."""

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
    resolve_peaks,
)
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
    assert resolve_peaks(option) == expected  # type: ignore[arg-type]


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
        resolve_peaks(None)


@pytest.mark.parametrize(
    ("given", "precision", "expected"),
    [("100", "fp32", 100.0), ("fp32=100,bf16=300", "bf16", 300.0), ("fp32=100", "int8", None)],
)
def test_each_precision_has_its_own_peak(
    given: str, precision: str, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    info = machine_info(given)
    assert info.peak_for(precision) == expected and info.peak_source == "option"
    assert "FP32 100" in info.peaks_line() and "(option)" in info.peaks_line()


def test_without_peaks_the_line_says_how_to_give_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    info = machine_info()
    assert (info.peaks, info.peak_source, info.peak_for("fp32")) == ({}, "none", None)
    assert "--peak-gflops" in info.peaks_line()


def test_machine_info_round_trip() -> None:
    info = dataclasses.replace(machine_info(10.0), extra={"peak_figures": {"fp32": {"runtime": "numpy"}}})
    assert info.logical_cores >= info.usable_cores >= 1
    assert info.onnxruntime and "CPUExecutionProvider" in info.onnxruntime_providers
    assert MachineInfo.from_dict(info.to_dict()) == info
    assert info.cpu_model in info.summary() and "GFLOP/s" in info.peaks_line()


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
    info = dataclasses.replace(machine_info(), load_average=load, usable_cores=cores)
    note = busy_note(info)
    assert (note is not None) == busy
    if note:
        assert "load average" in note and "quiet machine" in note
