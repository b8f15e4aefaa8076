"""Takes the running process and its OS; makes ``MachineInfo`` (CPU, GPUs, versions, GEMM peaks) and
``PeakMemory``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.ort_flavour import onnxruntime
from cxr.session import nvidia_smi

PEAK_ENV = "CXR_PEAK_GFLOPS"
PEAK_KEYS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
PEAK_HINT = (
    "give GFLOP/s as one number (the FP32 peak) or per precision as fp32=N,bf16=N,int8=N; "
    "`python benchmarks/peak.py` measures them on this host"
)


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` in a /proc file (first match, case-insensitive key), or None."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith(key.lower())), None)


def cpu_model() -> str:
    return (
        _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine() or "unknown"
    )


def memory_total_gib() -> float | None:
    total = _proc_field("/proc/meminfo", "MemTotal:")
    return None if total is None else round(int(total.split()[0]) / 1024**2, 1)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpus() -> tuple[str, ...]:
    """One 'name, driver, memory' line per NVIDIA GPU, or nothing when nvidia-smi is absent or fails."""
    return tuple(nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> tuple[float, ...]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return ()


def parse_peaks(text: str, what: str = "--peak-gflops") -> dict[str, float]:
    """``'N'`` -> {fp32: N}; ``'fp32=N,int8=M'`` -> both; a ``ConfigError`` naming ``what`` otherwise."""
    out: dict[str, float] = {}
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        key, _, raw = token.rpartition("=")
        key = key.strip().lower() or "fp32"
        if key not in PEAK_KEYS:
            raise ConfigError(
                f"{what}: unknown precision {key!r} in {text!r} (known: {', '.join(PEAK_KEYS)})",
                hint=PEAK_HINT,
            )
        try:
            value = float(raw)
        except ValueError as e:
            raise ConfigError(f"{what}: {raw.strip()!r} in {text!r} is not a number", hint=PEAK_HINT) from e
        if value <= 0:
            raise ConfigError(f"{what}: peaks must be positive, got {key}={value:g}", hint=PEAK_HINT)
        out[key] = value
    if not out:
        raise ConfigError(f"{what} is empty", hint=PEAK_HINT)
    return out


def resolve_peaks(value: float | str | Mapping[str, float] | None) -> tuple[dict[str, float], str]:
    """The peaks to divide by, and where from: the option, ``$CXR_PEAK_GFLOPS``, or ``none``."""
    if value is not None:
        text = ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, Mapping) else str(value)
        return parse_peaks(text), "option"
    raw = os.environ.get(PEAK_ENV, "").strip()
    return (parse_peaks(raw, PEAK_ENV), PEAK_ENV) if raw else ({}, "none")


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    logical_cores: int
    usable_cores: int
    memory_gib: float | None
    gpus: tuple[str, ...]
    platform: str
    python: str
    onnxruntime: str
    onnxruntime_providers: tuple[str, ...]
    numpy: str | None
    openvino: str | None  # installed version (package metadata; openvino is not imported for this)
    load_average: tuple[float, ...] = ()  # 1, 5, 15-minute load average when the run started (Unix)
    peaks: Mapping[str, float] = field(default_factory=dict)  # precision -> GEMM peak GFLOP/s
    peak_source: str = "none"  # "option", "CXR_PEAK_GFLOPS", "none" (or what benchmarks/ measured)
    extra: Mapping[str, Any] = field(default_factory=dict)  # anything a caller adds (benchmarks/)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MachineInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("gpus", "onnxruntime_providers", "load_average"):
            kw[k] = tuple(kw.get(k, ()))
        return cls(**kw)

    def peak_for(self, precision: str) -> float | None:
        """GFLOP/s a row that ran ``precision`` is compared with (None: no peak for it)."""
        return self.peaks.get(precision)

    def peaks_line(self) -> str:
        """``FP32 201, BF16 395 GFLOP/s (option)``, or why there are none."""
        if not self.peaks:
            return f"peak unknown (none given: --peak-gflops or ${PEAK_ENV})"
        figs = ", ".join(f"{k.upper()} {v:,.0f}" for k, v in self.peaks.items())
        return f"{figs} GFLOP/s ({self.peak_source})"

    def summary(self) -> str:
        gpu = "; ".join(self.gpus) if self.gpus else "no GPU"
        ov = f"; openvino {self.openvino}" if self.openvino else ""
        return (
            f"{self.cpu_model}, {self.usable_cores}/{self.logical_cores} cores, "
            f"{self.memory_gib if self.memory_gib is not None else '?'} GiB, {gpu}; "
            f"load avg {self.load_average[0] if self.load_average else '?'} at start; "
            f"onnxruntime {self.onnxruntime} ({', '.join(self.onnxruntime_providers)}){ov}"
        )


def machine_info(peak_gflops: float | str | Mapping[str, float] | None = None) -> MachineInfo:
    """This host, with the GEMM peaks ``peak_gflops`` (or ``$CXR_PEAK_GFLOPS``) gives."""
    peaks, source = resolve_peaks(peak_gflops)
    ort = onnxruntime()
    return MachineInfo(
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable_cores(),
        memory_gib=memory_total_gib(),
        gpus=gpus(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        onnxruntime=ort.__version__,
        onnxruntime_providers=tuple(ort.get_available_providers()),
        numpy=_version("numpy"),
        openvino=_version("openvino"),
        load_average=load_average(),
        peaks=peaks,
        peak_source=source,
    )


def busy_note(machine: MachineInfo) -> str | None:
    """A warning when other work was running on the CPU as the benchmark started."""
    if not machine.load_average or machine.load_average[0] <= max(0.5, 0.25 * machine.usable_cores):
        return None
    return (
        f"the CPU was busy when this run started (1-minute load average {machine.load_average[0]:g} on "
        f"{machine.usable_cores} usable cores): timings are noisy; re-run on a quiet machine before publishing"
    )


def _vm_hwm_kib() -> int | None:
    hwm = _proc_field("/proc/self/status", "VmHWM:")
    return None if hwm is None else int(hwm.split()[0])


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _process_max_mib() -> float:
    import resource

    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return raw / 1024**2 if sys.platform == "darwin" else raw / 1024


@dataclass(frozen=True)
class PeakMemory:
    peak_rss_mb: float
    scope: str  # "row": this configuration's own peak; "process": the process-lifetime maximum


class PeakMemoryProbe:
    """Call ``start()`` before a configuration and ``read()`` after it."""

    def __init__(self) -> None:
        self._row_scope = False

    def start(self) -> None:
        self._row_scope = _reset_high_water_mark() and _vm_hwm_kib() is not None

    def read(self) -> PeakMemory:
        hwm = _vm_hwm_kib() if self._row_scope else None
        if hwm is not None:
            return PeakMemory(round(hwm / 1024, 1), "row")
        return PeakMemory(round(_process_max_mib(), 1), "process")
