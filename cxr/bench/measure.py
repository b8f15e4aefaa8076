"""Takes a ``BenchConfig`` and calls to time (one client, or N threads like perf_analyzer); makes the inputs, sessions, memory readings and rows of a
bench."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr.bench.config import BenchConfig, TimingPlan
from cxr.bench.inputs import ModelFile, list_images
from cxr.bench.machine import MachineInfo, PeakMemory, PeakMemoryProbe
from cxr.bench.types import BenchRow, summarize
from cxr.cpu_kind import cpu_kind, isa_cap
from cxr.errors import ConfigError, CxrError, ModelError
from cxr.runtime.predictor import Predictor, PredictorConfig
from cxr.session import SessionConfig

log = logging.getLogger(__name__)


Call = Callable[[], Mapping[str, float] | None]


@dataclass(frozen=True)
class Timed:
    call_seconds: tuple[float, ...]
    wall_seconds: float
    first_call_seconds: float | None
    stage_seconds: Mapping[str, float] = field(default_factory=dict)  # summed over timed calls

    @property
    def calls(self) -> int:
        return len(self.call_seconds)


def time_calls(call: Call, plan: TimingPlan) -> Timed:
    """Warm up, then time ``call`` until ``plan.iterations`` calls and ``plan.min_seconds`` are done."""
    first: float | None = None
    for _ in range(plan.warmup):
        t0 = time.perf_counter()
        call()
        if first is None:
            first = time.perf_counter() - t0
    samples: list[float] = []
    stages: dict[str, float] = {}
    start = time.perf_counter()
    now = start
    while len(samples) < plan.iterations or now - start < plan.min_seconds:
        t0 = time.perf_counter()
        for k, v in (call() or {}).items():
            stages[k] = stages.get(k, 0.0) + float(v)
        now = time.perf_counter()
        samples.append(now - t0)
    return Timed(tuple(samples), now - start, first, stages)


class _Clients:
    """What the client threads of one ``time_concurrent`` run share; every field is guarded by ``lock``."""

    def __init__(self, clients: int, plan: TimingPlan) -> None:
        self.plan = plan
        self.target = clients * plan.iterations
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(clients, action=self._begin)
        self.issued = 0
        self.start = 0.0
        self.samples: list[float] = []
        self.ends: list[float] = []
        self.firsts: list[float] = []
        self.errors: list[BaseException] = []

    def _begin(self) -> None:
        self.start = time.perf_counter()

    def _fail(self, e: BaseException) -> None:
        with self.lock:
            self.errors.append(e)

    def _next(self) -> bool:
        """Hand out one more call, unless a client failed or the plan is done."""
        with self.lock:
            if self.errors or (
                self.issued >= self.target and time.perf_counter() - self.start >= self.plan.min_seconds
            ):
                return False
            self.issued += 1
            return True

    def _warm_up(self, call: Call) -> None:
        for i in range(self.plan.warmup):
            t0 = time.perf_counter()
            call()
            if i == 0:
                with self.lock:
                    self.firsts.append(time.perf_counter() - t0)

    def run(self, call: Call) -> None:
        """One client: warm up, wait for the others at the barrier, then call until the plan is done."""
        try:
            self._warm_up(call)
        except BaseException as e:  # re-raised in the caller's thread by ``time_concurrent``
            self._fail(e)
            self.barrier.abort()
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while self._next():
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                with self.lock:
                    self.samples.append(t1 - t0)
                    self.ends.append(t1)
        except BaseException as e:
            self._fail(e)


def time_concurrent(calls: Sequence[Call], plan: TimingPlan) -> Timed:
    """``len(calls)`` client threads, client i repeatedly making ``calls[i]``, started together at a barrier."""
    clients = len(calls)
    if clients < 1:
        raise ConfigError("concurrency must be >= 1")
    if clients == 1:
        return time_calls(calls[0], plan)
    shared = _Clients(clients, plan)
    threads = [threading.Thread(target=shared.run, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if shared.errors:
        raise shared.errors[0]
    firsts = shared.firsts
    return Timed(tuple(shared.samples), max(shared.ends) - shared.start, max(firsts) if firsts else None, {})


def effective_precision(file_precision: str, session_precision: str | None) -> str:
    """What really ran: the session's precision (OpenVINO's compiled one), else the file's; an INT8 file
    stays ``int8`` (its quantized ops run in INT8 whatever precision the rest of the graph gets)."""
    if session_precision is None or file_precision == "int8":
        return file_precision
    return session_precision


@dataclass(frozen=True)
class BenchInputs:
    """The images every measurement feeds: decoded once, before timing starts."""

    grays: tuple[np.ndarray, ...]  # decoded uint8 gray images, cycled to fill batches
    files: tuple[Path, ...] = ()


@dataclass
class BenchContext:
    """One run's configuration, machine, rows so far and notes; ``add`` logs a row and hands it on."""

    cfg: BenchConfig
    machine: MachineInfo
    on_row: Callable[[BenchRow], None] | None
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: BenchRow) -> None:
        self.rows.append(row)
        log.info(
            "%s b%d c%d %s: p50 %.2f ms",
            row.label(),
            row.batch_size,
            row.concurrency,
            row.mode,
            row.latency_ms.p50,
        )
        if self.on_row is not None:
            self.on_row(row)


T = TypeVar("T")


def cycled(items: Sequence[T], n: int, offset: int = 0) -> list[T]:
    """``n`` items starting at ``offset``, cycling when there are fewer items than ``n``."""
    return [items[(offset + i) % len(items)] for i in range(n)]


def load_inputs(cfg: BenchConfig, main: ModelFile) -> BenchInputs:
    from cxr.imaging.decode import decode_gray

    if cfg.folder is not None:
        files = list_images(cfg.folder)
        need = min(len(files), max(cfg.batch_sizes))
        return BenchInputs(tuple(decode_gray(f) for f in files[:need]), files)
    rng = np.random.default_rng(cfg.seed)
    h, w = main.metadata.preprocess.input_size
    return BenchInputs(
        tuple(rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(max(cfg.batch_sizes)))
    )


def guarded(call: Callable[[], Any], what: str, batch: int) -> Call:
    """Turn onnxruntime's untyped errors at run time into a ModelError naming the configuration."""

    def run() -> Mapping[str, float] | None:
        try:
            out = call()
        except CxrError:
            raise
        except Exception as e:  # onnxruntime raises untyped errors (e.g. a batch baked into a Reshape)
            raise ModelError(
                f"{what} failed at batch size {batch}: {str(e).splitlines()[0][:300]}",
                hint="use a batch size the model takes; a batch dimension frozen at export needs a re-export "
                "traced with batch >= 2",
            ) from e
        return out if isinstance(out, Mapping) else None

    return run


def make_row(
    ctx: BenchContext,
    *,
    kind: str,
    model: str,
    model_kind: str,
    precision: str,
    provider_requested: str,
    providers_used: Sequence[str],
    batch: int,
    threads: int | None,
    concurrency: int,
    mode: str,
    sessions: int,
    timed: Timed,
    memory: PeakMemory,
    create_s: float | None,
    flops: float | None,
    sha: str | None = None,
    warnings: Sequence[str] = (),
    precision_requested: str = "auto",
    agreement: Mapping[str, Any] | None = None,
) -> BenchRow:
    """One ``BenchRow`` from a timing: latency stats, throughput, GFLOP/s and efficiency, memory, provider."""
    stats = summarize(timed.call_seconds)
    throughput = batch * timed.calls / timed.wall_seconds if timed.wall_seconds > 0 else 0.0
    gflops = None if flops is None else flops * throughput / 1e9
    used = providers_used[0] if providers_used else "?"
    peak = ctx.machine.peak_for(precision)
    cap = isa_cap()
    stages = (
        {k: v * 1000.0 / timed.calls for k, v in timed.stage_seconds.items()} if timed.stage_seconds else None
    )
    return BenchRow(
        kind=kind,
        model=model,
        model_kind=model_kind,
        precision=precision,
        provider_requested=provider_requested,
        provider=used,
        provider_ok=provider_requested == "auto" or used == provider_requested,
        batch_size=batch,
        threads=threads,
        concurrency=concurrency,
        mode=mode,
        sessions=sessions,
        warmup=ctx.cfg.warmup,
        iterations=timed.calls,
        seconds=timed.wall_seconds,
        latency_ms=stats,
        latency_per_image_ms=stats.scaled(1.0 / batch),
        throughput_ips=throughput,
        first_call_ms=None if timed.first_call_seconds is None else timed.first_call_seconds * 1000.0,
        peak_rss_mb=memory.peak_rss_mb,
        rss_scope=memory.scope,
        session_create_s=create_s,
        model_sha256=sha,
        providers_used=tuple(providers_used),
        flops_per_image=flops,
        gflops=gflops,
        efficiency_pct=None if gflops is None or not peak else 100.0 * gflops / peak,
        stages_ms=stages,
        warnings=tuple(warnings),
        precision_requested=precision_requested,
        peak_gflops=peak,
        agreement=agreement,
        cpu_kind="" if used in ("cuda", "tensorrt") else cpu_kind(cap=cap if used == "openvino" else None),
        isa_cap=cap,
    )


def open_predictor(path: Path, session: SessionConfig) -> tuple[Predictor, float]:
    """A ``Predictor`` on ``path`` with ``session`` and the seconds it took to create."""
    t0 = time.perf_counter()
    predictor = Predictor.from_path(path, PredictorConfig(session=session))
    return predictor, time.perf_counter() - t0


def measure(probe: PeakMemoryProbe, calls: Sequence[Call], plan: TimingPlan) -> tuple[Timed, PeakMemory]:
    """Time ``calls`` (one client each) by ``plan`` and read the peak memory of that window."""
    probe.start()
    timed = time_concurrent(calls, plan)
    return timed, probe.read()
