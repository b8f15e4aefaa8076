"""cxr-bench's library: measure a cxr model over every configuration asked for, return rows.

Takes: a ``BenchConfig`` (model, precision variants, providers, batch sizes, intra-op threads, client
concurrency, warm-up and iteration plan, optional image folder for end-to-end runs, member files for the
separate-sessions reference, a training run for the PyTorch reference). Makes: a ``BenchReport`` (one
``BenchRow`` per configuration, machine info, notes); ``cxr.bench.report`` persists it.

For each model file x provider x threads, one session is created (timed) and reused for every batch size
and concurrency; with concurrency > 1 the same clients are also run against a pool of one session per
client. Inputs for pure inference are pre-decoded and pre-resized (the first images of ``folder``, or
seeded random pixels without one). Everything is checked before the first measurement (see
``cxr.bench.inputs``), so bad input fails in seconds with exit code 2, not after minutes.
torch is never imported here; the PyTorch reference lives in ``cxr.train.torch_reference``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr import __version__
from cxr.bench import eager
from cxr.bench.inputs import (
    ModelFile,
    check_batch_sizes,
    check_variants,
    inspect_model,
    list_images,
    resolve_members,
)
from cxr.bench.machine import MachineInfo, PeakMemory, PeakMemoryProbe, busy_note, machine_info
from cxr.bench.stats import summarize
from cxr.bench.timing import Call, Timed, TimingPlan, time_concurrent
from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import ConfigError, CxrError, ModelError
from cxr.runtime.predictor import Predictor, PredictorConfig
from cxr.session import PROVIDER_NAMES, SessionConfig

log = logging.getLogger(__name__)

__all__ = ["BenchConfig", "BenchReport", "BenchRow", "run_bench"]


@dataclass(frozen=True)
class BenchConfig:
    model: Path
    variants: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)  # None: onnxruntime's default
    concurrency: tuple[int, ...] = (1,)
    pool: bool = True  # with concurrency N > 1, also run N clients against N sessions
    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 0.0
    folder: Path | None = None  # end-to-end mode: decode + preprocess + inference on these files
    members: tuple[Path, ...] = ()  # member .onnx files or folders: the separate-sessions reference
    torch_run: Path | None = None  # training run with members/<name> checkpoints: the PyTorch reference
    peak_gflops: float | None = None  # None: $CXR_PEAK_GFLOPS, else unknown
    strict_provider: bool = False  # a provider fallback is an error instead of a reported row
    seed: int = 0  # for the random input pixels when there is no folder
    command: str = ""  # recorded in the report

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError(
                "no provider given", hint=f"use e.g. --provider cpu (one of {', '.join(PROVIDER_NAMES)})"
            )
        for p in self.providers:
            if p not in PROVIDER_NAMES:
                raise ConfigError(
                    f"unknown provider {p!r}", hint=f"use one or more of: {', '.join(PROVIDER_NAMES)}"
                )
        for name, values in (("batch size", self.batch_sizes), ("concurrency", self.concurrency)):
            if not values:
                raise ConfigError(f"no {name} given", hint="e.g. 1,8")
            if any(v < 1 for v in values):
                raise ConfigError(f"every {name} must be >= 1, got {list(values)}", hint="e.g. 1,8")
        if not self.threads:
            raise ConfigError("no thread count given", hint="e.g. --threads 1,2 (or 'default')")
        if any(t is not None and t < 1 for t in self.threads):
            raise ConfigError(
                f"thread counts must be >= 1, got {list(self.threads)}", hint="e.g. --threads 1,2"
            )
        lists: tuple[tuple[str, tuple[Any, ...]], ...] = (
            ("providers", self.providers),
            ("batch sizes", self.batch_sizes),
            ("threads", self.threads),
            ("concurrency", self.concurrency),
        )
        for what, given in lists:
            if len(set(given)) != len(given):
                raise ConfigError(f"{what} {list(given)} repeat a value", hint="give each value once")
        TimingPlan(self.warmup, self.iterations, self.min_seconds)  # validates the plan

    @property
    def plan(self) -> TimingPlan:
        return TimingPlan(self.warmup, self.iterations, self.min_seconds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = [str(x) if isinstance(x, Path) else x for x in v]
        return d


@dataclass(frozen=True)
class _Inputs:
    grays: tuple[np.ndarray, ...]  # decoded uint8 gray images, cycled to fill batches
    files: tuple[Path, ...] = ()


@dataclass
class _Context:
    cfg: BenchConfig
    machine: MachineInfo
    on_row: Callable[[BenchRow], None] | None
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: BenchRow) -> None:
        self.rows.append(row)
        log.info(
            "%s %s b%d t%s c%d %s: p50 %.2f ms, %.1f img/s",
            row.kind,
            row.label(),
            row.batch_size,
            row.threads or "default",
            row.concurrency,
            row.mode,
            row.latency_ms.p50,
            row.throughput_ips,
        )
        if self.on_row is not None:
            self.on_row(row)


T = TypeVar("T")


def _batch(items: Sequence[T], n: int, offset: int = 0) -> list[T]:
    """``n`` items starting at ``offset``, cycling when there are fewer items than ``n``."""
    return [items[(offset + i) % len(items)] for i in range(n)]


def _load_inputs(cfg: BenchConfig, main: ModelFile) -> _Inputs:
    from cxr.imaging.decode import decode_gray

    if cfg.folder is not None:
        files = list_images(cfg.folder)
        need = min(len(files), max(cfg.batch_sizes))
        return _Inputs(tuple(decode_gray(f) for f in files[:need]), files)
    rng = np.random.default_rng(cfg.seed)
    h, w = main.metadata.preprocess.input_size
    return _Inputs(tuple(rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(max(cfg.batch_sizes))))


def _guarded(call: Callable[[], Any], what: str, batch: int) -> Call:
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


def _make_row(
    ctx: _Context,
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
) -> BenchRow:
    stats = summarize(timed.call_seconds)
    throughput = batch * timed.calls / timed.wall_seconds if timed.wall_seconds > 0 else 0.0
    gflops = None if flops is None else flops * throughput / 1e9
    peak = ctx.machine.peak_gflops
    used = providers_used[0] if providers_used else "?"
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
    )


def _open(path: Path, provider: str, threads: int | None, strict: bool) -> tuple[Predictor, float]:
    scfg = SessionConfig(provider=provider, threads=threads, strict_provider=strict)
    t0 = time.perf_counter()
    predictor = Predictor.from_path(path, PredictorConfig(session=scfg))
    return predictor, time.perf_counter() - t0


def _measure(probe: PeakMemoryProbe, calls: Sequence[Call], plan: TimingPlan) -> tuple[Timed, PeakMemory]:
    probe.start()
    timed = time_concurrent(calls, plan)
    return timed, probe.read()


def _bench_model(ctx: _Context, mf: ModelFile, inputs: _Inputs, probe: PeakMemoryProbe) -> None:
    cfg, plan = ctx.cfg, ctx.cfg.plan
    for provider in cfg.providers:
        for threads in cfg.threads:
            predictor, create_s = _open(mf.path, provider, threads, cfg.strict_provider)
            pool: list[tuple[Predictor, float]] = [(predictor, create_s)]
            row = functools.partial(
                _make_row,
                ctx,
                model=mf.name,
                model_kind=mf.kind,
                precision=mf.precision,
                provider_requested=provider,
                providers_used=predictor.info.providers,
                threads=threads,
                flops=mf.flops_per_image,
                sha=mf.sha256[:16],
                warnings=predictor.info.warnings,
            )
            what = f"{mf.name} on {provider}"
            for batch in cfg.batch_sizes:
                x = predictor.prepare(_batch(inputs.grays, batch))
                for conc in cfg.concurrency:
                    shared = _guarded(functools.partial(predictor.run, x), what, batch)
                    timed, mem = _measure(probe, [shared] * conc, plan)
                    ctx.add(
                        row(
                            kind="inference",
                            batch=batch,
                            concurrency=conc,
                            mode="session",
                            sessions=1,
                            timed=timed,
                            memory=mem,
                            create_s=create_s,
                        )
                    )
                    if conc > 1 and cfg.pool:
                        while len(pool) < conc:
                            pool.append(_open(mf.path, provider, threads, cfg.strict_provider))
                        calls = [_guarded(functools.partial(p.run, x), what, batch) for p, _ in pool[:conc]]
                        timed, mem = _measure(probe, calls, plan)
                        ctx.add(
                            row(
                                kind="inference",
                                batch=batch,
                                concurrency=conc,
                                mode="pool",
                                sessions=conc,
                                timed=timed,
                                memory=mem,
                                create_s=sum(s for _, s in pool[:conc]),
                            )
                        )
                if inputs.files:
                    call = _guarded(_end_to_end_call(predictor, inputs.files, batch), what, batch)
                    timed, mem = _measure(probe, [call], plan)
                    ctx.add(
                        row(
                            kind="end_to_end",
                            batch=batch,
                            concurrency=1,
                            mode="session",
                            sessions=1,
                            timed=timed,
                            memory=mem,
                            create_s=create_s,
                        )
                    )
            del pool, predictor


def _end_to_end_call(
    predictor: Predictor, files: Sequence[Path], batch: int
) -> Callable[[], Mapping[str, float]]:
    """Each call decodes the next ``batch`` files (cycling), prepares and runs them; returns stage seconds."""
    state = {"offset": 0}

    def call() -> Mapping[str, float]:
        chunk = _batch(files, batch, state["offset"])
        state["offset"] = (state["offset"] + batch) % len(files)
        t0 = time.perf_counter()
        grays = [predictor.decode(f) for f in chunk]
        t1 = time.perf_counter()
        x = predictor.prepare(grays)
        t2 = time.perf_counter()
        predictor.run(x)
        t3 = time.perf_counter()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2}

    return call


def _sequence_call(predictors: Sequence[Predictor], xs: Sequence[np.ndarray]) -> Callable[[], None]:
    """One call = every member's session run on its own pre-normalised input, in sequence."""

    def call() -> None:
        for p, x in zip(predictors, xs, strict=True):
            p.run(x)

    return call


def _bench_members(
    ctx: _Context, main: ModelFile, members: Sequence[ModelFile], inputs: _Inputs, probe: PeakMemoryProbe
) -> None:
    cfg = ctx.cfg
    flops_each = [m.flops_per_image for m in members]
    flops = (
        sum(f for f in flops_each if f is not None)
        if all(f is not None for f in flops_each)
        else main.flops_per_image
    )
    for provider in cfg.providers:
        for threads in cfg.threads:
            opened = [_open(m.path, provider, threads, cfg.strict_provider) for m in members]
            predictors = [p for p, _ in opened]
            used = predictors[0].info.providers
            warnings = tuple(w for p in predictors for w in p.info.warnings)
            for batch in cfg.batch_sizes:
                grays = _batch(inputs.grays, batch)
                xs = [p.prepare(grays) for p in predictors]
                call = _sequence_call(predictors, xs)
                timed, mem = _measure(probe, [_guarded(call, f"members of {main.name}", batch)], cfg.plan)
                ctx.add(
                    _make_row(
                        ctx,
                        kind="members_separate",
                        model=main.name,
                        model_kind=main.kind,
                        precision=main.precision,
                        provider_requested=provider,
                        providers_used=used,
                        batch=batch,
                        threads=threads,
                        concurrency=1,
                        mode="session",
                        sessions=len(predictors),
                        timed=timed,
                        memory=mem,
                        create_s=sum(s for _, s in opened),
                        flops=flops,
                        sha=main.sha256[:16],
                        warnings=warnings,
                    )
                )
            del opened, predictors


def _bench_torch(
    ctx: _Context, main: ModelFile, run_dir: Path, inputs: _Inputs, probe: PeakMemoryProbe
) -> None:
    cfg = ctx.cfg
    names = main.member_order or ((main.member_name,) if main.member_name else ())
    if not names:
        ctx.notes.append(f"PyTorch eager reference skipped: {main.name} names no members in its metadata")
        return
    if not eager.torch_installed():
        ctx.notes.append(eager.NO_TORCH)
        log.warning("%s", eager.NO_TORCH)
        return
    ref = eager.reference()
    devices = sorted({ref.resolve_device(p) for p in cfg.providers})
    for device in devices:
        reason = ref.unavailable_reason(run_dir, names, device)
        if reason is not None:
            ctx.notes.append(reason)
            log.warning("%s", reason)
            continue
        members = ref.load_members(run_dir, names, device)
        for threads in cfg.threads:
            for batch in cfg.batch_sizes:
                call, restore = ref.members_call(members, _batch(inputs.grays, batch), threads)
                try:
                    timed, mem = _measure(
                        probe, [_guarded(call, f"PyTorch members from {run_dir}", batch)], cfg.plan
                    )
                finally:
                    restore()
                ctx.add(
                    _make_row(
                        ctx,
                        kind="torch_eager",
                        model=main.name,
                        model_kind=main.kind,
                        precision="fp32",
                        provider_requested=device,
                        providers_used=(device,),
                        batch=batch,
                        threads=threads,
                        concurrency=1,
                        mode="eager",
                        sessions=len(names),
                        timed=timed,
                        memory=mem,
                        create_s=members.load_seconds,
                        flops=main.flops_per_image,
                        warnings=(f"torch {members.torch_version}",),
                    )
                )
        del members


def prepare(cfg: BenchConfig) -> tuple[ModelFile, tuple[ModelFile, ...], tuple[ModelFile, ...]]:
    """Check every input (models, variants, batch sizes, folder, members, run dir) before measuring."""
    main = inspect_model(cfg.model)
    variants = tuple(inspect_model(v) for v in cfg.variants)
    check_variants(main, variants)
    for mf in (main, *variants):
        check_batch_sizes(mf, cfg.batch_sizes)
    if cfg.folder is not None:
        list_images(cfg.folder)
    members = resolve_members(main, cfg.members) if cfg.members else ()
    for m in members:
        check_batch_sizes(m, cfg.batch_sizes)
    if cfg.torch_run is not None and not Path(cfg.torch_run).is_dir():
        raise ConfigError(
            f"--torch-run {cfg.torch_run} is not a folder",
            hint="pass the training run folder that holds members/<name> checkpoints, or drop --torch-run",
        )
    return main, variants, members


def run_bench(cfg: BenchConfig, on_row: Callable[[BenchRow], None] | None = None) -> BenchReport:
    """Measure every configuration ``cfg`` asks for; ``on_row`` sees each row as soon as it is measured."""
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    machine = machine_info(cfg.peak_gflops)
    main, variants, members = prepare(cfg)
    ctx = _Context(cfg, machine, on_row)
    inputs = _load_inputs(cfg, main)
    probe = PeakMemoryProbe()
    for mf in (main, *variants):
        _bench_model(ctx, mf, inputs, probe)
    if members:
        _bench_members(ctx, main, members, inputs, probe)
    if cfg.torch_run is not None:
        _bench_torch(ctx, main, Path(cfg.torch_run), inputs, probe)
    busy = busy_note(machine)
    if busy is not None:
        ctx.notes.append(busy)
    if ctx.rows and ctx.rows[0].rss_scope == "process":
        ctx.notes.append("peak RSS is the process-lifetime maximum (the per-row reset is not available here)")
    if machine.peak_gflops is None and any(r.gflops is not None for r in ctx.rows):
        ctx.notes.append(
            "efficiency % not computed: machine peak unknown (pass --peak-gflops or set CXR_PEAK_GFLOPS)"
        )
    return BenchReport(
        created=started,
        cxr_version=__version__,
        command=cfg.command,
        machine=machine,
        config=cfg.to_dict(),
        rows=tuple(ctx.rows),
        notes=tuple(ctx.notes),
    )
