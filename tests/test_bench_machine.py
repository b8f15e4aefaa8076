"""cxr-bench machine info: peak GFLOP/s resolution, per-row peak memory, busy-CPU note, round trip."""

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
    resolve_peak_gflops,
)
from cxr.errors import ConfigError


@pytest.mark.parametrize(
    ("option", "env", "expected"),
    [
        (None, None, (None, "unknown")),
        (None, "234", (234.0, "CXR_PEAK_GFLOPS")),
        (100.0, "234", (100.0, "option")),
    ],
)
def test_peak_resolution(
    option: float | None, env: str | None, expected: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    if env is None:
        monkeypatch.delenv("CXR_PEAK_GFLOPS", raising=False)
    else:
        monkeypatch.setenv("CXR_PEAK_GFLOPS", env)
    assert resolve_peak_gflops(option) == expected


@pytest.mark.parametrize(("option", "env"), [(0.0, None), (-1.0, None), (None, "fast"), (None, "-3")])
def test_bad_peak_is_refused(option: float | None, env: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_PEAK_GFLOPS", env or "")
    with pytest.raises(ConfigError):
        resolve_peak_gflops(option)


def test_machine_info_round_trip() -> None:
    info = machine_info(10.0)
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
    info = dataclasses.replace(machine_info(), load_average=load, usable_cores=cores)
    note = busy_note(info)
    assert (note is not None) == busy
    if note:
        assert "load average" in note and "quiet machine" in note
