"""Takes a ``BenchConfig`` and timed calls; makes the inputs, sessions, memory readings and rows of a
bench."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr.bench.config import BenchConfig
from cxr.bench.inputs import ModelFile, list_images
from cxr.bench.machine import MachineInfo, PeakMemory, PeakMemoryProbe
from cxr.bench.stats import summarize
from cxr.bench.timing import Call, Timed, TimingPlan, time_concurrent
from cxr.bench.types import BenchRow
from cxr.errors import CxrError, ModelError
from cxr.runtime.predictor import Predictor, PredictorConfig
from cxr.session import SessionConfig

log = logging.getLogger(__name__)


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
