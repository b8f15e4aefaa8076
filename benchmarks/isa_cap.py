"""Takes a study's options and an ISA cap (``AVX2``); makes the study's OpenVINO rows measured with OpenVINO
capped to that ISA, as a stand-in for a clinic PC without AVX-512, merged into the same report.

OpenVINO's CPU plugin honours oneDNN's ``ONEDNN_MAX_CPU_ISA``, read once when the library first dispatches,
so it is set in the environment of a child ``study.py`` before openvino is imported there. Under ``AVX2`` the
runtime model's primitives turn from ``brgconv_avx512_*``/``jit_avx512_*`` to ``*_avx2_*`` (OpenVINO's own
kernels too), and BF16 cannot compile although ``OPTIMIZATION_CAPABILITIES`` still lists it: OpenVINO's
defaults (BF16 inference precision on a BF16 CPU) fail to compile, so the capped "defaults" peer asks for
f32, the default a CPU without AVX512-BF16 gets (the row's warning says so). onnxruntime's kernels and
numpy's BLAS ignore the variable: the child runs OpenVINO rows only (fused FP32, each ``--variant``, the
peers) and measures its GEMM peaks with OpenVINO only, so efficiency divides by the capped peaks. Each
capped row's model name ends in `` [AVX2]`` and carries a warning naming the cap.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr.bench.report import load_report
from cxr.bench.types import BenchReport
from cxr.cpu_kind import ISA_ENV, cap_allows_bf16, isa_cap
from cxr.errors import ConfigError

HERE = Path(__file__).resolve().parent
CAPS = ("AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16")
"""The caps ``--isa-cap`` offers (oneDNN's names): a plain AVX2 PC, one with AVX-VNNI, AVX-512 without VNNI,
with VNNI (Ice Lake, Zen 4 without BF16), with BF16."""


def check_cap(cap: str) -> str:
    """``cap`` upper-cased, or a ConfigError naming the ones offered."""
    if cap.upper() not in CAPS:
        raise ConfigError(f"unknown --isa-cap {cap!r}", hint=f"use one of: {', '.join(CAPS)}")
    return cap.upper()


def openvino_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """OpenVINO's defaults as a CPU of the capped ISA gets them: {} uncapped; an f32 inference precision
    where the cap leaves no BF16 (uncapped, OpenVINO would pick BF16 and fail to compile)."""
    cap = isa_cap(environ)
    return {} if cap_allows_bf16(cap) else {"INFERENCE_PRECISION_HINT": "f32"}


def row_warnings(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The warning every row measured under a cap carries (none uncapped)."""
    cap = isa_cap(environ)
    if cap is None:
        return ()
    defaults = " (OpenVINO's defaults: f32 inference precision, as on a CPU without BF16)"
    return (f"OpenVINO capped to {cap} ({ISA_ENV}={cap}){defaults if openvino_defaults(environ) else ''}",)


def child_argv(a: argparse.Namespace, out: Path) -> list[str]:
    """The study.py options of the capped run: OpenVINO rows only, the same models, batches and peers."""
    argv = ["--model", str(a.model), "-p", "openvino", "--precision", "fp32"]
    for v in a.variant:
        argv += ["--variant", str(v)]
    argv += ["-b", a.batch_sizes, "-t", a.threads, "--warmup", str(a.warmup), "-n", str(a.iterations)]
    argv += ["--min-seconds", str(a.min_seconds), "--seed", str(a.seed), "--peak-size", str(a.peak_size)]
    argv += ["--peak-runtimes", "openvino", "--quiet", "-o", str(out)]
    if a.member_models and (a.openvino_peer or a.nncf_peer):
        for m in a.member_models:
            argv += ["--member-models", str(m)]
        argv += ["--no-separate-members"]
        argv += ["--openvino-peer"] if a.openvino_peer else []
        argv += ["--nncf-peer"] if a.nncf_peer else []
    if a.agreement_folder is not None:
        argv += ["--agreement-folder", str(a.agreement_folder), "--agreement-images", str(a.agreement_images)]
    return argv


def run_capped(a: argparse.Namespace, cap: str, out: Path) -> BenchReport:
    """Run the capped child study (``ONEDNN_MAX_CPU_ISA=cap`` set before it imports openvino); its report."""
    env = {**os.environ, ISA_ENV: cap}
    cmd = [sys.executable, str(HERE / "study.py"), *child_argv(a, out)]
    print(f"$ {ISA_ENV}={cap} study.py {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0 or not out.is_file():
        raise ConfigError(
            f"the {cap}-capped run failed (exit code {rc})",
            hint="see its output above; rerun without --isa-cap to get the uncapped rows",
        )
    return load_report(out)


def merge(report: BenchReport, capped: BenchReport, cap: str) -> BenchReport:
    """``report`` with ``capped``'s rows (model name `` [cap]``, a warning naming the cap), notes and peak
    figures added."""
    (warning,) = row_warnings({ISA_ENV: cap})
    rows = tuple(
        dataclasses.replace(
            r,
            model=f"{r.model} [{cap}]",
            warnings=r.warnings
            if any(w.startswith(f"OpenVINO capped to {cap}") for w in r.warnings)
            else (*r.warnings, warning),
        )
        for r in capped.rows
    )
    figs: Any = capped.machine.extra.get("peak_figures") or {}
    extra = {**report.machine.extra, "peak_figures_capped": {"cap": cap, "figures": figs}}
    return dataclasses.replace(
        report,
        machine=dataclasses.replace(report.machine, extra=extra),
        rows=(*report.rows, *rows),
        notes=(*report.notes, *(f"{cap} cap: {n}" for n in capped.notes)),
        config={**report.config, "isa_cap": {"cap": cap, "command": capped.command}},
    )
