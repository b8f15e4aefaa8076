"""Takes measured values; makes ``LatencyStats`` (numpy percentiles, slow outliers counted and kept), ``BenchRow``,
``BenchReport``, their JSON form (schema ``cxr-bench`` v2) and a validator."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.bench.machine import MachineInfo
from cxr.errors import ConfigError, DataError

SCHEMA = "cxr-bench"
SCHEMA_VERSION = 2
ROW_KINDS: tuple[str, ...] = (
    "inference",
    "end_to_end",
    "members_separate",
    "torch_eager",
    "peer_openvino_defaults",
)
REQUIRED_ROW_KEYS: tuple[str, ...] = tuple(
    "kind model precision provider_requested provider provider_ok batch_size threads concurrency mode "
    "latency_ms latency_per_image_ms throughput_ips peak_rss_mb rss_scope".split()
)


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call (or per image, see ``scaled``) over ``count`` timed calls."""

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    outliers: int  # samples above Tukey's upper fence (still included in every statistic above)
    outlier_fence: float  # Q3 + 1.5 * IQR, in the same unit

    def scaled(self, factor: float) -> LatencyStats:
        """The same statistics multiplied by ``factor`` (e.g. 1 / batch size for per-image figures)."""
        times = {
            f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self) if f.type == "float"
        }
        return dataclasses.replace(self, **times)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        floats = {f.name: float(d[f.name]) for f in dataclasses.fields(cls) if f.type == "float"}
        return cls(count=int(d["count"]), outliers=int(d["outliers"]), **floats)


def summarize(seconds: Sequence[float]) -> LatencyStats:
    """Statistics in milliseconds of per-call wall times given in seconds."""
    if len(seconds) == 0:
        raise ConfigError("no timed samples to summarise", hint="measure at least one iteration")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    q1, p50, q3, p90, p95, p99 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90, 95, 99]))
    fence = q3 + 1.5 * (q3 - q1)
    return LatencyStats(
        count=int(ms.size),
        mean=float(ms.mean()),
        std=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min=float(ms.min()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=float(ms.max()),
        outliers=int((ms > fence).sum()),
        outlier_fence=fence,
    )


@dataclass(frozen=True)
class BenchRow:
    kind: str
    model: str  # file name
    model_kind: str  # "ensemble" or "member"
    precision: str  # what really ran: "fp32", "bf16", "fp16", "int8"
    provider_requested: str
    provider: str  # the provider that really ran the model's ops
    provider_ok: bool  # False when the session fell back to another provider
    batch_size: int
    threads: int | None  # intra-op threads; None = onnxruntime's default
    concurrency: int  # client threads
    mode: str  # "session": clients share one session; "pool": one session per client
    sessions: int
    warmup: int
    iterations: int  # timed calls, all clients together
    seconds: float  # measured wall time
    latency_ms: LatencyStats
    latency_per_image_ms: LatencyStats
    throughput_ips: float
    peak_rss_mb: float
    rss_scope: str  # "row" (this configuration's peak) or "process" (process-lifetime maximum)
    first_call_ms: float | None = None  # the first warm-up call: what a cold request sees
    session_create_s: float | None = None
    model_sha256: str | None = None
    providers_used: tuple[str, ...] = ()
    flops_per_image: float | None = None
    gflops: float | None = None  # achieved: flops_per_image * throughput
    efficiency_pct: float | None = None  # gflops / peak_gflops * 100 (None when that peak is unknown)
    stages_ms: Mapping[str, float] | None = None  # end_to_end: mean ms per batch of each stage
    warnings: tuple[str, ...] = ()
    precision_requested: str = "auto"  # openvino: auto | fp32 | bf16; onnxruntime: auto (the file's own)
    peak_gflops: float | None = None  # the machine's peak for ``precision`` (efficiency's denominator)
    agreement: Mapping[str, Any] | None = None  # {"top1", "images", "reference"}: vs FP32 on real images
    cpu_kind: str = ""  # the CPU kind (cxr.cpu_kind) the row ran as: OpenVINO's under isa_cap; "" on a GPU
    isa_cap: str | None = (
        None  # ONEDNN_MAX_CPU_ISA when set (OpenVINO honours it, onnxruntime's CPU does not)
    )

    def key(self) -> str:
        """What identifies this configuration across runs (compare matches rows on it)."""
        threads = "default" if self.threads is None else str(self.threads)
        asked = "" if self.precision_requested == "auto" else f"|asked-{self.precision_requested}"
        return (
            f"{self.kind}|{self.model_kind}|{self.precision}|{self.provider_requested}|b{self.batch_size}"
            f"|t{threads}|c{self.concurrency}|{self.mode}{asked}{f'|isa-{self.isa_cap}' if self.isa_cap else ''}"
        )

    def precision_label(self) -> str:
        """``bf16``; ``bf16 (auto)`` when OpenVINO chose it; ``fp32 (asked bf16)`` when it got another;
        ``int8 (fp32 float ops)`` for an INT8 file asked to run its floating-point ops in fp32."""
        asked = self.precision_requested
        if asked == self.precision or (asked == "auto" and self.provider_requested != "openvino"):
            return self.precision
        if asked == "auto":
            return f"{self.precision} (auto)"
        if self.precision == "int8":  # an INT8 file: the request concerns the ops left in floating point
            return f"int8 ({asked} float ops)"
        return f"{self.precision} (asked {asked})"

    def label(self) -> str:
        ref = {
            "members_separate": "members",
            "torch_eager": "torch",
            "end_to_end": "e2e",
            "peer_openvino_defaults": "members, OpenVINO defaults (peer)",
        }.get(self.kind, "")
        if self.kind == "torch_eager" and self.mode == "best":
            ref = "torch best"
        return f"{self.model} {self.precision_label()}{' ' + ref if ref else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key(), **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchRow:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["latency_ms"] = LatencyStats.from_dict(d["latency_ms"])
        kw["latency_per_image_ms"] = LatencyStats.from_dict(d["latency_per_image_ms"])
        kw["providers_used"] = tuple(d.get("providers_used", ()))
        kw["warnings"] = tuple(d.get("warnings", ()))
        return cls(**kw)


@dataclass(frozen=True)
class BenchReport:
    created: str  # when the run started, ISO 8601, UTC
    cxr_version: str
    command: str
    machine: MachineInfo
    config: Mapping[str, Any]
    rows: tuple[BenchRow, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            **dataclasses.asdict(self),
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "report") -> BenchReport:
        validate_report(d, source=source)
        try:
            return cls(
                created=str(d.get("created", "")),
                cxr_version=str(d.get("cxr_version", "")),
                command=str(d.get("command", "")),
                machine=MachineInfo.from_dict(d["machine"]),
                config=dict(d.get("config", {})),
                rows=tuple(BenchRow.from_dict(r) for r in d["rows"]),
                notes=tuple(str(n) for n in d.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{source}: malformed cxr-bench report ({type(e).__name__}: {e})",
                hint="pass a JSON file written by `cxr-bench run --output`",
                path=source,
            ) from e


def validate_report(d: Any, *, source: str = "report") -> None:
    """Raise ``DataError`` naming the first problem when ``d`` is not a cxr-bench report."""
    problem = _problem(d)
    if problem is not None:
        raise DataError(
            f"{source}: {problem}", hint="pass a JSON file written by `cxr-bench run --output`", path=source
        )


def _problem(d: Any) -> str | None:
    if not isinstance(d, Mapping):
        return f"a cxr-bench report is a JSON object, got {type(d).__name__}"
    if d.get("schema") != SCHEMA:
        return f"not a cxr-bench report (schema {d.get('schema')!r})"
    if d.get("schema_version") != SCHEMA_VERSION:
        return f"report schema version {d.get('schema_version')!r}; this cxr reads version {SCHEMA_VERSION} (re-run it)"
    if not isinstance(d.get("machine"), Mapping):
        return "report has no 'machine' object"
    if not isinstance(d.get("rows"), list):
        return "report has no 'rows' list"
    for i, row in enumerate(d["rows"]):
        if not isinstance(row, Mapping):
            return f"row {i} is not an object"
        if missing := [k for k in REQUIRED_ROW_KEYS if k not in row]:
            return f"row {i} lacks {', '.join(missing)}"
        if row["kind"] not in ROW_KINDS:
            return f"row {i} has unknown kind {row['kind']!r} (known: {', '.join(ROW_KINDS)})"
    return None
