"""cxr-bench's library: measure a cxr model over every configuration asked for, return rows.

Takes: a ``BenchConfig`` (model, precision variants, providers, runtime precisions, batch sizes, intra-op
threads, client concurrency, warm-up and iteration plan, optional image folder for end-to-end runs, member
files for the separate-sessions reference, a training run for the PyTorch reference, real images for the
top-1 agreement of reduced-precision rows). Makes: a ``BenchReport`` (one ``BenchRow`` per configuration,
machine info with this host's measured GEMM peaks, notes); ``cxr.bench.report`` persists it.

For each model file x (provider, precision) x threads, one session is created (timed) and reused for every
batch size and concurrency; with concurrency > 1 the same clients are also run against a pool of one session per
client. Inputs for pure inference are pre-decoded and pre-resized (the first images of ``folder``, or
seeded random pixels without one). Everything is checked before the first measurement (see
``cxr.bench.inputs``), so bad input fails in seconds with exit code 2, not after minutes.
torch is never imported here; the PyTorch reference lives in ``cxr.train.torch_reference`` (FP32 eager)
and ``cxr.bench.torch_best`` (best mode, torch imported inside its functions).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr import __version__
from cxr.bench.config import BenchConfig, provider_precisions
from cxr.bench.inputs import (
    ModelFile,
    check_batch_sizes,
    check_variants,
    inspect_model,
    list_images,
    resolve_members,
)
from cxr.bench.machine import PEAK_ENV, MachineInfo, PeakMemoryProbe, busy_note, machine_info
from cxr.bench.measure import (
    BenchContext,
    BenchInputs,
    cycled,
    effective_precision,
    guarded,
    load_inputs,
    make_row,
    measure,
    open_predictor,
)
from cxr.bench.peers import bench_openvino_defaults
from cxr.bench.precision import AgreementCheck, Refusals, agreement_check, precision_refusals
from cxr.bench.references import bench_members, bench_torch
from cxr.bench.timing import Call
from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import ConfigError
from cxr.runtime.predictor import Predictor

__all__ = ["BenchConfig", "BenchReport", "BenchRow", "run_bench"]

log = logging.getLogger(__name__)

RowMaker = Callable[..., BenchRow]


@dataclass(frozen=True)
class _Checks:
    """What was found before measuring: refused (file, provider, precision) runs, the agreement check."""

    refused: Refusals
    agree: AgreementCheck | None


@dataclass
class _Sessions:
    """One model file on one provider x threads: its first session, then a pool grown on demand."""

    open_one: Callable[[], tuple[Predictor, float]]
    row: RowMaker  # make_row with this file's, provider's and threads' fields filled in
    what: str  # names the configuration in errors
    pool: list[tuple[Predictor, float]]

    def take(self, n: int) -> list[tuple[Predictor, float]]:
        """The first ``n`` sessions, opening the missing ones."""
        while len(self.pool) < n:
            self.pool.append(self.open_one())
        return self.pool[:n]


def _bench_model(
    ctx: BenchContext,
    mf: ModelFile,
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    checks: _Checks,
) -> None:
    """Every (provider, precision) x threads for one model file: one session each (plus a pool)."""
    cfg = ctx.cfg
    for provider, precision in cfg.runs:
        if (mf.path, provider, precision) in checks.refused:
            continue  # the note was written when the refusal was found
        for threads in cfg.threads:
            opener = functools.partial(
                open_predictor, mf.path, provider, threads, cfg.strict_provider, precision
            )
            predictor, create_s = opener()
            ran = effective_precision(mf.precision, predictor.info.precision)
            agreement = (
                None
                if checks.agree is None
                else checks.agree.of((str(mf.path), provider, precision), predictor, ran, mf)
            )
            row = functools.partial(
                make_row,
                ctx,
                model=mf.name,
                model_kind=mf.kind,
                precision=ran,
                precision_requested=precision,
                provider_requested=provider,
                providers_used=predictor.info.providers,
                threads=threads,
                flops=mf.flops_per_image,
                sha=mf.sha256[:16],
                warnings=predictor.info.warnings,
                agreement=agreement,
            )
            what = f"{mf.name} on {predictor.info.label}"
            sessions = _Sessions(opener, row, what, [(predictor, create_s)])
            for batch in cfg.batch_sizes:
                _bench_batch(ctx, sessions, batch, inputs, probe)
            del sessions, predictor


def _bench_batch(
    ctx: BenchContext, sessions: _Sessions, batch: int, inputs: BenchInputs, probe: PeakMemoryProbe
) -> None:
    """One batch size: each concurrency on the first session, then on a pool, then end to end."""
    row, what = sessions.row, sessions.what
    predictor, create_s = sessions.pool[0]
    x = predictor.prepare(cycled(inputs.grays, batch))
    one = {"batch": batch, "mode": "session", "sessions": 1, "create_s": create_s}
    for conc in ctx.cfg.concurrency:
        shared = guarded(functools.partial(predictor.run, x, heatmaps=predictor.has_heatmaps), what, batch)
        _add_timed(ctx, row, probe, [shared] * conc, kind="inference", concurrency=conc, **one)
        if conc > 1 and ctx.cfg.pool:
            pool = sessions.take(conc)
            calls = [
                guarded(functools.partial(p.run, x, heatmaps=p.has_heatmaps), what, batch) for p, _ in pool
            ]
            pooled = {"batch": batch, "mode": "pool", "sessions": conc, "create_s": sum(s for _, s in pool)}
            _add_timed(ctx, row, probe, calls, kind="inference", concurrency=conc, **pooled)
    if inputs.files:
        call = guarded(_end_to_end_call(predictor, inputs.files, batch), what, batch)
        _add_timed(ctx, row, probe, [call], kind="end_to_end", concurrency=1, **one)


def _add_timed(
    ctx: BenchContext, row: RowMaker, probe: PeakMemoryProbe, calls: Sequence[Call], **fields: object
) -> None:
    """Measure ``calls`` by the run's plan and add the row ``row(**fields)`` makes of it."""
    timed, mem = measure(probe, calls, ctx.cfg.plan)
    ctx.add(row(timed=timed, memory=mem, **fields))


def _end_to_end_call(
    predictor: Predictor, files: Sequence[Path], batch: int
) -> Callable[[], Mapping[str, float]]:
    """Each call decodes the next ``batch`` files (cycling), prepares and runs them; returns stage seconds."""
    state = {"offset": 0}

    def call() -> Mapping[str, float]:
        chunk = cycled(files, batch, state["offset"])
        state["offset"] = (state["offset"] + batch) % len(files)
        t0 = time.perf_counter()
        grays = [predictor.decode(f) for f in chunk]
        t1 = time.perf_counter()
        x = predictor.prepare(grays)
        t2 = time.perf_counter()
        predictor.run(x, heatmaps=predictor.has_heatmaps)  # a heatmap variant is timed with its maps
        t3 = time.perf_counter()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2}

    return call


def prepare(cfg: BenchConfig) -> tuple[ModelFile, tuple[ModelFile, ...], tuple[ModelFile, ...]]:
    """Check every input (models, variants, batch sizes, folder, members, run dir) before measuring."""
    main = inspect_model(cfg.model)
    variants = tuple(inspect_model(v) for v in cfg.variants)
    check_variants(main, variants)
    for mf in (main, *variants):
        check_batch_sizes(mf, cfg.batch_sizes)
    for folder in (cfg.folder, cfg.agreement_folder):
        if folder is not None:
            list_images(folder)
    members = resolve_members(main, cfg.members) if cfg.members else ()
    for m in members:
        check_batch_sizes(m, cfg.batch_sizes)
    if cfg.torch_run is not None and not Path(cfg.torch_run).is_dir():
        raise ConfigError(
            f"--torch-run {cfg.torch_run} is not a folder",
            hint="pass the training run folder that holds members/<name> checkpoints, or drop --torch-run",
        )
    return main, variants, members


def _run_notes(machine: MachineInfo, rows: Sequence[BenchRow]) -> list[str]:
    """What the reader of the report should know about how the rows were measured."""
    notes: list[str] = []
    busy = busy_note(machine)
    if busy is not None:
        notes.append(busy)
    if rows and rows[0].rss_scope == "process":
        notes.append("peak RSS is the process-lifetime maximum (the per-row reset is not available here)")
    unknown = sorted({r.precision for r in rows if r.gflops is not None and r.peak_gflops is None})
    if unknown:
        notes.append(
            f"efficiency % not computed for {', '.join(unknown)} rows: no peak for that precision here "
            f"({machine.peaks_line()}); pass --peak-gflops {unknown[0]}=GFLOPS or set {PEAK_ENV}"
        )
    return notes


def run_bench(cfg: BenchConfig, on_row: Callable[[BenchRow], None] | None = None) -> BenchReport:
    """Measure every configuration ``cfg`` asks for; ``on_row`` sees each row as soon as it is measured."""
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    main, variants, members = prepare(cfg)
    refused, refusal_notes = precision_refusals(cfg, (main, *variants, *members), cfg.runs)
    machine = machine_info(cfg.peak_gflops, measure_peak=cfg.measure_peak, peak_size=cfg.peak_size)
    ctx = BenchContext(cfg, machine, on_row)
    ctx.notes.extend(provider_precisions(cfg.providers, cfg.precisions)[1])
    ctx.notes.extend(refusal_notes)
    for note in ctx.notes:
        log.warning("%s", note)
    checks = _Checks(refused, agreement_check(cfg, (main, *variants), ctx.notes))
    inputs = load_inputs(cfg, main)
    probe = PeakMemoryProbe()
    for mf in (main, *variants):
        _bench_model(ctx, mf, inputs, probe, checks)
    if members:
        bench_members(ctx, main, members, inputs, probe, refused)
        if cfg.openvino_peer:
            bench_openvino_defaults(ctx, main, members, inputs, probe)
    if cfg.torch_run is not None:
        bench_torch(ctx, main, Path(cfg.torch_run), inputs, probe, checks.agree)
    ctx.notes.extend(_run_notes(machine, ctx.rows))
    return BenchReport(
        created=started,
        cxr_version=__version__,
        command=cfg.command,
        machine=machine,
        config=cfg.to_dict(),
        rows=tuple(ctx.rows),
        notes=tuple(ctx.notes),
    )
