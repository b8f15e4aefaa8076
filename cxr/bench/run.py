"""cxr-bench's library: takes a ``BenchConfig``; makes a ``BenchReport`` with one row per configuration."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.bench.config import BenchConfig, provider_precisions
from cxr.bench.inputs import ModelFile, check_batch_sizes, check_variants, inspect_model, list_images
from cxr.bench.machine import PEAK_ENV, MachineInfo, PeakMemoryProbe, busy_note, machine_info
from cxr.bench.measure import (
    BenchContext,
    BenchInputs,
    Call,
    cycled,
    effective_precision,
    guarded,
    load_inputs,
    make_row,
    measure,
    open_predictor,
)
from cxr.bench.types import BenchReport, BenchRow
from cxr.errors import ProviderError
from cxr.onnx_header import read_onnx_header
from cxr.openvino_session import INSTALL_HINT, cpu_has_bf16, openvino_version
from cxr.precision import PrecisionChoice, choose_precision, plan_int8
from cxr.runtime.predictor import Predictor
from cxr.session import int8_backends

__all__ = ["BenchConfig", "BenchReport", "BenchRow", "run_bench"]

log = logging.getLogger(__name__)

Refusals = Mapping[tuple[Path, str, str], str]
Reference = Callable[[BenchContext, ModelFile, BenchInputs, PeakMemoryProbe], None]
"""Adds reference rows to a run (``benchmarks/``): the context, the main model file, the inputs, the probe."""


def _choice(mf: ModelFile, provider: str, precision: str, cpu_bf16: bool | None) -> PrecisionChoice:
    """What a session of ``provider`` would run for ``precision`` on ``mf`` here (``ProviderError``: refused)."""
    plan = plan_int8(mf.path, provider, precision, int8_backends(provider))
    props = plan.props or read_onnx_header(mf.path).metadata
    ov = plan.provider == "openvino"
    return choose_precision(
        precision,
        cpu_bf16=cpu_bf16 if ov else None,
        props=props,
        model_name=mf.name,
        int8=plan.int8,
        backend="openvino" if ov else "onnxruntime",
    )


def precision_refusals(
    files: Sequence[ModelFile], runs: Sequence[tuple[str, str]], strict: bool = False
) -> tuple[dict[tuple[Path, str, str], str], list[str]]:
    """(path, provider, precision) -> why that run is not measured, and one note per skip: OpenVINO would
    refuse its bf16, int8 is not verified for this CPU kind, or an ``auto`` chooses a precision that is
    measured anyway (no duplicate rows)."""
    ov_runs = {precision for provider, precision in runs if provider == "openvino"}
    if ov_runs and openvino_version() is None:
        raise ProviderError(
            "provider 'openvino' needs the openvino package, which cannot be imported here",
            hint=f"{INSTALL_HINT}, or drop openvino from --provider",
        )
    cpu_bf16 = None
    if ov_runs & {"bf16", "auto"}:
        import openvino as ov

        cpu_bf16 = cpu_has_bf16(ov.Core())
    checked = [(p, q) for p, q in runs if p in ("openvino", "cpu", "auto") and q != "fp32"]
    skipped: dict[tuple[Path, str, str], str] = {}
    notes: list[str] = []
    for mf in files:
        for provider, precision in [(p, q) for p, q in checked if q != "auto"]:
            try:
                _choice(mf, provider, precision, cpu_bf16)
            except ProviderError as e:
                if strict:
                    raise
                skipped[(mf.path, provider, precision)] = e.message
                notes.append(f"skipped {provider} {precision} for {mf.name}: {e.message}")
        for provider in [p for p, q in checked if q == "auto"]:
            choice = _choice(mf, provider, "auto", cpu_bf16)
            measured = (provider, choice.precision) in runs and (
                mf.path,
                provider,
                choice.precision,
            ) not in skipped
            if measured and choice.note:
                skipped[(mf.path, provider, "auto")] = f"same as {choice.precision}"
                notes.append(f"{choice.note}; measured once, as its {provider} {choice.precision} rows")
    return skipped, notes


def _bench_model(
    ctx: BenchContext, mf: ModelFile, inputs: BenchInputs, probe: PeakMemoryProbe, refused: Refusals
) -> None:
    """Every (provider, precision) x threads x batch x clients for one model file."""
    cfg = ctx.cfg
    for provider, precision in cfg.runs:
        if (mf.path, provider, precision) in refused:
            continue  # the note was written when the refusal was found
        for threads in cfg.threads:
            opener = functools.partial(open_predictor, mf.path, cfg.session_for(provider, precision, threads))
            sessions = [opener()]
            predictor = sessions[0][0]
            row = functools.partial(
                make_row,
                ctx,
                model=predictor.model_path.name,  # the INT8 file beside mf when int8 runs
                model_kind=mf.kind,
                precision=effective_precision(mf.precision, predictor.info.precision),
                precision_requested=precision,
                provider_requested=provider,
                providers_used=predictor.info.providers,
                threads=threads,
                flops=mf.flops_per_image,
                sha=predictor.model_id,  # the file's that ran (mf's, or its INT8 variant's)
                warnings=predictor.info.warnings,
            )
            what = f"{mf.name} on {predictor.info.label}"

            def add(calls: Sequence[Call], **fields: Any) -> None:
                timed, mem = measure(probe, calls, cfg.plan)
                ctx.add(row(timed=timed, memory=mem, **fields))  # noqa: B023 (called at once)

            for batch in cfg.batch_sizes:
                x = predictor.prepare(cycled(inputs.grays, batch))
                for clients in cfg.concurrency:
                    for mode, n in [("session", 1)] + (
                        [("pool", clients)] if clients > 1 and cfg.pool else []
                    ):
                        sessions += [opener() for _ in range(n - len(sessions))]  # a pool grows on demand
                        used = sessions[:n]
                        run = [functools.partial(p.run, x, heatmaps=p.has_heatmaps) for p, _ in used]
                        calls = [guarded(c, what, batch) for c in run * (clients // n)]
                        create_s = sum(s for _, s in used)
                        add(
                            calls,
                            kind="inference",
                            batch=batch,
                            concurrency=clients,
                            mode=mode,
                            sessions=n,
                            create_s=create_s,
                        )
                if inputs.files:
                    call = guarded(_end_to_end_call(predictor, inputs.files, batch), what, batch)
                    add(
                        [call],
                        kind="end_to_end",
                        batch=batch,
                        concurrency=1,
                        mode="session",
                        sessions=1,
                        create_s=sessions[0][1],
                    )
            del sessions, predictor


def _end_to_end_call(
    predictor: Predictor, files: Sequence[Path], batch: int
) -> Callable[[], Mapping[str, float]]:
    """Each call decodes the next ``batch`` files (cycling), prepares and runs them; returns stage seconds."""
    offsets = itertools.count(0, batch)

    def call() -> Mapping[str, float]:
        chunk = cycled(files, batch, next(offsets) % len(files))
        t0 = time.perf_counter()
        grays = [predictor.decode(f) for f in chunk]
        t1 = time.perf_counter()
        x = predictor.prepare(grays)
        t2 = time.perf_counter()
        predictor.run(x, heatmaps=predictor.has_heatmaps)  # a heatmap variant is timed with its maps
        t3 = time.perf_counter()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2}

    return call


def prepare(cfg: BenchConfig) -> tuple[ModelFile, tuple[ModelFile, ...]]:
    """Check every input (model, variants, batch sizes, folder) before measuring."""
    main = inspect_model(cfg.model)
    variants = tuple(inspect_model(v) for v in cfg.variants)
    check_variants(main, variants)
    for mf in (main, *variants):
        check_batch_sizes(mf, cfg.batch_sizes)
    if cfg.folder is not None:
        list_images(cfg.folder)
    return main, variants


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
            f"efficiency % not computed for {', '.join(unknown)} rows: no GEMM peak given for "
            f"{'them' if len(unknown) > 1 else 'it'}; pass --peak-gflops {unknown[0]}=GFLOPS or set {PEAK_ENV} "
            "(`python benchmarks/peak.py` measures them)"
        )
    return notes


def run_bench(
    cfg: BenchConfig,
    on_row: Callable[[BenchRow], None] | None = None,
    references: Sequence[Reference] = (),
) -> BenchReport:
    """Measure every configuration ``cfg`` asks for; ``on_row`` sees each row as soon as it is measured."""
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    main, variants = prepare(cfg)
    refused, refusal_notes = precision_refusals((main, *variants), cfg.runs, cfg.session.strict_provider)
    ctx = BenchContext(cfg, machine_info(cfg.peak_gflops), on_row)
    ctx.notes.extend(provider_precisions(cfg.providers, cfg.precisions)[1])
    ctx.notes.extend(refusal_notes)
    for note in ctx.notes:
        log.warning("%s", note)
    inputs = load_inputs(cfg, main)
    probe = PeakMemoryProbe()
    for mf in (main, *variants):
        _bench_model(ctx, mf, inputs, probe, refused)
    for reference in references:
        reference(ctx, main, inputs, probe)
    ctx.notes.extend(_run_notes(ctx.machine, ctx.rows))
    return BenchReport(
        created=started,
        cxr_version=__version__,
        command=cfg.command,
        machine=ctx.machine,
        config=cfg.to_dict(),
        rows=tuple(ctx.rows),
        notes=tuple(ctx.notes),
    )
