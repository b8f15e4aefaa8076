"""What machine a benchmark ran on, and how much memory each configuration really took.

Takes: nothing but the running process and its OS. Makes: ``MachineInfo`` (CPU model, logical and usable
cores, memory, GPU via ``nvidia-smi`` when present, onnxruntime and openvino versions, library versions,
and the GEMM peak GFLOP/s per precision: measured here by ``cxr.bench.peak`` unless ``--peak-gflops`` /
``$CXR_PEAK_GFLOPS`` give them) and ``PeakMemory`` readings.

Peak memory: on Linux the kernel's resident high-water mark (``VmHWM`` in /proc/self/status) is reset
before each configuration by writing ``5`` to /proc/self/clear_refs, so a row's ``peak_rss_mb`` is that
configuration's peak (scope ``"row"``). Where the reset is impossible the figure is the process-lifetime
maximum from ``resource.getrusage`` (scope ``"process"``), which can only grow from row to row; the
scope is written beside every figure so a reader knows which one they got.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.bench.peak import DEFAULT_REPEATS, DEFAULT_SIZE, PEAK_PRECISIONS, PeakFigure, measure_peaks
from cxr.errors import ConfigError
from cxr.ort_flavour import onnxruntime

PEAK_ENV = "CXR_PEAK_GFLOPS"


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read_text("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def memory_total_gib() -> float | None:
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpus() -> tuple[str, ...]:
    """One 'name, driver, memory' line per NVIDIA GPU, or nothing when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


PEAK_KEYS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
PEAK_HINT = (
    "give GFLOP/s as one number (the FP32 peak) or per precision as fp32=N,bf16=N,int8=N; "
    "`cxr-bench peak` measures them on this host"
)


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


def resolve_peak_overrides(value: float | str | Mapping[str, float] | None) -> tuple[dict[str, float], str]:
    """The peaks given instead of measured, and where from: the option, ``$CXR_PEAK_GFLOPS``, or none."""
    if value is not None:
        if isinstance(value, Mapping):
            return parse_peaks(",".join(f"{k}={v}" for k, v in value.items())), "option"
        return parse_peaks(str(value)), "option"
    raw = os.environ.get(PEAK_ENV, "").strip()
    return (parse_peaks(raw, PEAK_ENV), PEAK_ENV) if raw else ({}, "none")


def resolve_peaks(
    value: float | str | Mapping[str, float] | None,
    *,
    measure: bool = True,
    size: int = DEFAULT_SIZE,
    threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
) -> dict[str, PeakFigure]:
    """Every peak this run compares against: the overrides, then a measurement of the precisions left."""
    overrides, source = resolve_peak_overrides(value)
    todo = [p for p in PEAK_PRECISIONS if p not in overrides] if measure else []
    measured = (
        measure_peaks(todo, size=size, threads=threads or usable_cores(), repeats=repeats) if todo else {}
    )
    peaks = {k: PeakFigure(k, v, source, None, 0, source) for k, v in overrides.items()}
    return {**measured, **peaks}


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
    torch: str | None  # installed version (read from package metadata; torch is never imported for this)
    peak_gflops: float | None  # the FP32 peak (measured or given); per-precision peaks are in ``peaks``
    peak_source: str  # "measured", "option", "CXR_PEAK_GFLOPS" or "unknown"
    load_average: tuple[float, ...] = ()  # 1, 5, 15-minute load average when the run started (Unix)
    extra: Mapping[str, Any] = field(default_factory=dict)
    openvino: str | None = None  # installed version (package metadata; openvino is not imported for this)
    peaks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # precision -> PeakFigure.to_dict()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"] = list(self.gpus)
        d["onnxruntime_providers"] = list(self.onnxruntime_providers)
        d["load_average"] = list(self.load_average)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MachineInfo:
        return cls(
            cpu_model=str(d.get("cpu_model", "unknown")),
            logical_cores=int(d.get("logical_cores", 0)),
            usable_cores=int(d.get("usable_cores", 0)),
            memory_gib=d.get("memory_gib"),
            gpus=tuple(d.get("gpus", ())),
            platform=str(d.get("platform", "")),
            python=str(d.get("python", "")),
            onnxruntime=str(d.get("onnxruntime", "")),
            onnxruntime_providers=tuple(d.get("onnxruntime_providers", ())),
            numpy=d.get("numpy"),
            torch=d.get("torch"),
            peak_gflops=d.get("peak_gflops"),
            peak_source=str(d.get("peak_source", "unknown")),
            load_average=tuple(float(v) for v in d.get("load_average", ())),
            extra=dict(d.get("extra", {})),
            openvino=d.get("openvino"),
            peaks={str(k): PeakFigure.from_dict(v).to_dict() for k, v in dict(d.get("peaks", {})).items()},
        )

    def peak(self, precision: str) -> PeakFigure | None:
        """The peak of one precision; reports without ``peaks`` (older cxr) have their FP32 one only."""
        if precision in self.peaks:
            return PeakFigure.from_dict(self.peaks[precision])
        if precision == "fp32" and not self.peaks and self.peak_gflops:
            return PeakFigure("fp32", self.peak_gflops, self.peak_source, None, 0, self.peak_source)
        return None

    def peak_for(self, precision: str, *, gpu: bool = False) -> float | None:
        """GFLOP/s a row that ran ``precision`` is compared with; a measured (CPU) peak never for a GPU row."""
        fig = self.peak(precision)
        if fig is None or (gpu and fig.source == "measured"):
            return None
        return fig.gflops

    def peaks_line(self) -> str:
        """``FP32 201 GFLOP/s (onnxruntime, 2 threads, 2048^3); BF16 ...``, or why there are none."""
        figs = [f for f in (self.peak(p) for p in (*PEAK_PRECISIONS, "fp16")) if f is not None]
        return "; ".join(f.describe() for f in figs) if figs else "peak unknown (not measured, none given)"

    def summary(self) -> str:
        gpu = "; ".join(self.gpus) if self.gpus else "no GPU"
        ov = f"; openvino {self.openvino}" if self.openvino else ""
        return (
            f"{self.cpu_model}, {self.usable_cores}/{self.logical_cores} cores, "
            f"{self.memory_gib if self.memory_gib is not None else '?'} GiB, {gpu}; "
            f"load avg {self.load_average[0] if self.load_average else '?'} at start; "
            f"onnxruntime {self.onnxruntime} ({', '.join(self.onnxruntime_providers)}){ov}; "
            f"GEMM peak GFLOP/s: {self.peaks_short()}"
        )

    def peaks_short(self) -> str:
        """``fp32 201, bf16 395, int8 697`` (``unknown`` without any)."""
        figs = [f for f in (self.peak(p) for p in (*PEAK_PRECISIONS, "fp16")) if f and f.gflops]
        return ", ".join(f"{f.precision} {f.gflops:,.0f}" for f in figs if f.gflops) or "unknown"


def machine_info(
    peak_gflops: float | str | Mapping[str, float] | None = None,
    *,
    measure_peak: bool = True,
    peak_size: int = DEFAULT_SIZE,
    peak_threads: int | None = None,
) -> MachineInfo:
    """This host, with its GEMM peaks: ``peak_gflops`` (or ``$CXR_PEAK_GFLOPS``) where given, else measured."""
    peaks = resolve_peaks(peak_gflops, measure=measure_peak, size=peak_size, threads=peak_threads)
    fp32 = peaks.get("fp32")
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
        torch=_version("torch"),
        peak_gflops=None if fp32 is None else fp32.gflops,
        peak_source="unknown" if fp32 is None or fp32.gflops is None else fp32.source,
        load_average=load_average(),
        openvino=_version("openvino"),
        peaks={k: v.to_dict() for k, v in peaks.items()},
    )


def load_average() -> tuple[float, ...]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return ()


def busy_note(machine: MachineInfo) -> str | None:
    """A warning when other work was running on the CPU as the benchmark started."""
    if not machine.load_average or machine.load_average[0] <= max(0.5, 0.25 * machine.usable_cores):
        return None
    return (
        f"the CPU was busy when this run started (1-minute load average {machine.load_average[0]:g} on "
        f"{machine.usable_cores} usable cores): timings are noisy, PyTorch eager's OpenMP threads suffer most; "
        "re-run on a quiet machine before publishing"
    )


def _status_kib(key: str) -> int | None:
    for line in _read_text("/proc/self/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _process_max_mib() -> float:
    import resource

    # ru_maxrss: KiB on Linux, bytes on macOS
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
        self._row_scope = _reset_high_water_mark() and _status_kib("VmHWM") is not None

    def read(self) -> PeakMemory:
        if self._row_scope:
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                return PeakMemory(round(hwm / 1024, 1), "row")
        return PeakMemory(round(_process_max_mib(), 1), "process")
