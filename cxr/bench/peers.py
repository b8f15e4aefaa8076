"""Takes a fused model's member files; makes the "OpenVINO defaults" peer rows, as a user would run them.

The honest peer of cxr's CPU paths: each member file compiled by OpenVINO with no settings at all (its
default inference precision: BF16 on CPUs with AVX512-BF16 or AMX, never checked against FP32), run one
after another like the separate-sessions rows. cxr's own OpenVINO rows run the fused graph and offer BF16
only after the agreement check recorded by ``cxr fuse``; this row is what a user gets without cxr, so the
comparison is like for like. Skipped when openvino is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from cxr.bench.inputs import ModelFile
from cxr.bench.machine import PeakMemoryProbe
from cxr.bench.measure import BenchContext, BenchInputs, cycled, guarded, make_row, measure
from cxr.errors import ProviderError
from cxr.imaging.preprocess import to_model_input
from cxr.openvino_session import OV_PRECISIONS, import_openvino

KIND = "peer_openvino_defaults"


def _compile(members: Sequence[ModelFile], threads: int | None) -> tuple[list[object], str, float]:
    core = import_openvino().Core()
    config = {} if threads is None else {"INFERENCE_NUM_THREADS": threads}
    t0 = time.perf_counter()
    compiled = [core.compile_model(str(m.path), "CPU", config) for m in members]
    hint = compiled[0].get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled, OV_PRECISIONS.get(hint, hint), time.perf_counter() - t0


def bench_openvino_defaults(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
) -> None:
    """The members in OpenVINO with its defaults, in sequence, at every batch size and thread count."""
    try:
        import_openvino()
    except ProviderError as e:
        ctx.notes.append(f"no OpenVINO-defaults peer row: {e.message}")
        return
    flops_each = [m.flops_per_image for m in members]
    flops = sum(f for f in flops_each if f is not None) if all(f is not None for f in flops_each) else None
    for threads in ctx.cfg.threads:
        compiled, precision, create_s = _compile(members, threads)
        for batch in ctx.cfg.batch_sizes:
            grays = cycled(inputs.grays, batch)
            xs = [to_model_input(grays, m.metadata.preprocess, normalized=True) for m in members]

            def call(xs: Sequence[np.ndarray] = xs, models: Sequence[object] = compiled) -> None:
                for model, x in zip(models, xs, strict=True):
                    model(x)  # type: ignore[operator]

            timed, mem = measure(
                probe,
                [guarded(call, f"OpenVINO defaults on the members of {main.name}", batch)],
                ctx.cfg.plan,
            )
            ctx.add(
                make_row(
                    ctx,
                    kind=KIND,
                    model=main.name,
                    model_kind=main.kind,
                    precision=precision,
                    precision_requested="auto",  # OpenVINO's own choice; the row's warning says it is unverified
                    provider_requested="openvino",
                    providers_used=("openvino",),
                    batch=batch,
                    threads=threads,
                    concurrency=1,
                    mode="session",
                    sessions=len(compiled),
                    timed=timed,
                    memory=mem,
                    create_s=create_s,
                    flops=flops,
                    sha=main.sha256[:16],
                    warnings=(
                        f"peer: OpenVINO's own default precision ({precision}), not checked against FP32",
                    ),
                )
            )
