"""Takes a GEMM size and thread count; makes this host's measured GEMM peak per precision (GFLOP/s).

``python benchmarks/peak.py [--size 2048] [--threads N] [-o peaks.json]`` prints them and the
``--peak-gflops`` value to give cxr-bench; ``study.py`` (``make bench``) measures them at the start of its run.
The efficiency column of cxr-bench divides a row's achieved GFLOP/s by what THIS host reaches on a big
square matrix product in the precision the row really ran, with the runtimes installed here:

- ``fp32``: numpy's BLAS (``a @ b``), onnxruntime ``MatMul`` and, when installed, OpenVINO ``MatMul``
  (INFERENCE_PRECISION_HINT f32); the figure is the fastest of them, and says which.
- ``bf16``: OpenVINO ``MatMul`` compiled with INFERENCE_PRECISION_HINT bf16, only where OpenVINO reports
  BF16 in the CPU's OPTIMIZATION_CAPABILITIES (AVX512-BF16 or AMX); elsewhere None, with the reason.
- ``int8``: onnxruntime ``MatMulInteger`` (uint8 x int8 -> int32, the u8s8 kernel of its QDQ models) and
  OpenVINO ``FakeQuantize -> MatMul`` (its low-precision pass runs it as a u8 x i8 FullyConnected).

How the graphs are built: onnxruntime needs an ONNX graph and cxr-bench may not import ``onnx``, so a
one-node model is written as protobuf bytes by ``onnx_writer.py``; OpenVINO builds its graphs in
memory with its own opset API (``openvino.opset13``), no file. The right-hand matrix is a constant in
every graph (weights are constants in real models, so the runtimes may pre-pack it as they do there).
Timing: one warm-up call, then the best of ``repeats`` calls (stopping early after ``budget_s`` per
runtime); GFLOP/s = 2*M*N*K / best seconds. 2048^3 takes about a second per runtime on 2 cores. onnxruntime
and OpenVINO run ``threads`` threads (cxr-bench passes the usable cores); numpy's BLAS uses its own default.
Results are kept per process and (size, threads, repeats): the host does not change while cxr-bench runs
(``fresh=True`` measures again). openvino is imported only inside the functions that use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import isa_cap
import numpy as np
from onnx_writer import gemm_model

from cxr.bench.machine import busy_note, machine_info, usable_cores
from cxr.bench.report import text_table
from cxr.errors import ConfigError, first_line

PEAK_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
DEFAULT_SIZE = 2048
DEFAULT_REPEATS = 5
BUDGET_S = 2.0
OPENVINO_MISSING = "not installed (pip install 'cxr-toolkit[openvino]')"

GemmCall = Callable[[], object]


class PeakUnavailable(Exception):
    """One runtime cannot measure one precision here (not installed, no CPU support, refused the graph)."""


@dataclass(frozen=True)
class PeakFigure:
    """One precision's peak: the best runtime's GFLOP/s, or None with the reason."""

    precision: str
    gflops: float | None
    runtime: str | None  # the runtime that reached it ("option" / env var name for an override)
    threads: int | None  # that runtime's threads (None: the BLAS's own default)
    size: int  # M = N = K (0 for an override)
    source: str = "measured"  # "measured", "option" or the env var that set it
    candidates: Mapping[str, float] = field(default_factory=dict)  # every runtime that ran -> GFLOP/s
    reason: str | None = None  # why there is no figure, or which runtimes could not run

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "gflops": self.gflops,
            "runtime": self.runtime,
            "threads": self.threads,
            "size": self.size,
            "source": self.source,
            "candidates": dict(self.candidates),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PeakFigure:
        return cls(
            precision=str(d["precision"]),
            gflops=None if d.get("gflops") is None else float(d["gflops"]),
            runtime=d.get("runtime"),
            threads=d.get("threads"),
            size=int(d.get("size", 0)),
            source=str(d.get("source", "measured")),
            candidates={str(k): float(v) for k, v in dict(d.get("candidates", {})).items()},
            reason=d.get("reason"),
        )

    def describe(self) -> str:
        """``BF16 361 GFLOP/s (openvino, 2 threads, 2048^3)`` or ``BF16 unknown: <reason>``."""
        name = self.precision.upper()
        if self.gflops is None:
            return f"{name} unknown: {self.reason or 'not measured'}"
        if self.source != "measured":
            return f"{name} {self.gflops:,.0f} GFLOP/s ({self.source})"
        threads = (
            "BLAS default threads"
            if self.threads is None
            else f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        )
        return f"{name} {self.gflops:,.0f} GFLOP/s ({self.runtime}, {threads}, {self.size}^3)"


def best_seconds(call: GemmCall, repeats: int, budget_s: float = BUDGET_S) -> float:
    """One warm-up call, then the fastest of ``repeats`` calls (at least one; stops after ``budget_s``)."""
    call()
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def _numpy_fp32(size: int, threads: int, rng: np.random.Generator) -> GemmCall:
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    return lambda: a @ b


def _ort_call(model: bytes, feed: np.ndarray, threads: int) -> GemmCall:
    from cxr.session import cpu_session

    try:
        sess = cpu_session(model, threads)
    except Exception as e:  # onnxruntime raises untyped errors for kernels it lacks
        raise PeakUnavailable(f"onnxruntime refused the graph: {first_line(e, 200)}") from e
    return lambda: sess.run(None, {"A": feed})


def _ort_fp32(size: int, threads: int, rng: np.random.Generator) -> GemmCall:
    b = rng.standard_normal((size, size), dtype=np.float32)
    model = gemm_model("MatMul", ("A", np.float32, (size, size)), b, ("Y", np.float32, (size, size)))
    return _ort_call(model, rng.standard_normal((size, size), dtype=np.float32), threads)


def _ort_int8(size: int, threads: int, rng: np.random.Generator) -> GemmCall:
    b = rng.integers(-128, 128, (size, size), dtype=np.int8)
    model = gemm_model("MatMulInteger", ("A", np.uint8, (size, size)), b, ("Y", np.int32, (size, size)))
    return _ort_call(model, rng.integers(0, 256, (size, size), dtype=np.uint8), threads)


def _openvino() -> Any:
    if importlib.util.find_spec("openvino") is None:
        raise PeakUnavailable(OPENVINO_MISSING)
    import openvino as ov

    return ov


def _ov_compile(ov: Any, outputs: Any, a: Any, hint: str, threads: int, want: str) -> Any:
    """Compile for the CPU and check that the GEMM node really runs ``want`` (OpenVINO's runtime model)."""
    core = ov.Core()
    if hint == "bf16" and isa_cap.openvino_defaults():
        raise PeakUnavailable(
            f"{isa_cap.ISA_ENV}={isa_cap.isa_cap()} leaves no BF16 (OpenVINO cannot compile it)"
        )
    if hint == "bf16" and "BF16" not in [
        str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    ]:
        raise PeakUnavailable(
            "this CPU has no BF16 support (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)"
        )
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
        "INFERENCE_NUM_THREADS": threads,
    }
    compiled = core.compile_model(ov.Model([outputs], [a], f"cxr_peak_{want}"), "CPU", config)
    ran = {
        str(op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ops()
        if str(op.get_rt_info()["layerType"].astype(str)) in ("MatMul", "FullyConnected")
    }
    if want not in ran:
        raise PeakUnavailable(f"OpenVINO ran the GEMM in {', '.join(sorted(ran)) or '?'}, not {want}")
    return compiled


def _ov_call(compiled: Any, feed: np.ndarray) -> GemmCall:
    request = compiled.create_infer_request()
    return lambda: request.infer({0: feed})


def _ov_float(hint: str, size: int, threads: int, rng: np.random.Generator) -> GemmCall:
    ov = _openvino()
    import openvino.opset13 as ops

    a = ops.parameter([size, size], ov.Type.f32, name="A")
    b = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    compiled = _ov_compile(ov, ops.matmul(a, b, False, False), a, hint, threads, hint)
    return _ov_call(compiled, rng.standard_normal((size, size), dtype=np.float32))


def _ov_int8(size: int, threads: int, rng: np.random.Generator) -> GemmCall:
    ov = _openvino()
    import openvino.opset13 as ops

    def quantized(x: Any, lo: float, hi: float) -> Any:
        low, high = ops.constant(np.float32(lo)), ops.constant(np.float32(hi))
        return ops.fake_quantize(x, low, high, low, high, 256)

    a = ops.parameter([size, size], ov.Type.f32, name="A")
    b = ops.constant(rng.integers(-128, 128, (size, size)).astype(np.float32))
    product = ops.matmul(quantized(a, 0, 255), quantized(b, -128, 127), False, False)
    compiled = _ov_compile(ov, product, a, "f32", threads, "u8")
    return _ov_call(compiled, rng.integers(0, 256, (size, size)).astype(np.float32))


Builder = Callable[[int, int, np.random.Generator], GemmCall]
RUNTIMES: Mapping[str, Sequence[tuple[str, Builder]]] = {
    "fp32": (
        ("numpy", _numpy_fp32),
        ("onnxruntime", _ort_fp32),
        ("openvino", lambda s, t, r: _ov_float("f32", s, t, r)),
    ),
    "bf16": (("openvino", lambda s, t, r: _ov_float("bf16", s, t, r)),),
    "int8": (("onnxruntime", _ort_int8), ("openvino", _ov_int8)),
}


def measure_peak(
    precision: str,
    size: int,
    threads: int,
    repeats: int = DEFAULT_REPEATS,
    runtimes: Sequence[str] | None = None,
) -> PeakFigure:
    """The fastest runtime's GFLOP/s for one precision (None, with every runtime's reason, when none ran);
    ``runtimes``: only those (e.g. ``openvino`` under an ISA cap that numpy and onnxruntime ignore)."""
    if precision not in RUNTIMES:
        raise ConfigError(f"unknown peak precision {precision!r}", hint=f"use one of: {', '.join(RUNTIMES)}")
    rng = np.random.default_rng(0)
    flops = 2.0 * size**3
    got: dict[str, float] = {}
    failed: list[str] = []
    for runtime, build in RUNTIMES[precision]:
        if runtimes is not None and runtime not in runtimes:
            continue
        try:
            call = build(size, threads, rng)
            got[runtime] = flops / best_seconds(call, repeats) / 1e9
        except PeakUnavailable as e:
            failed.append(f"{runtime}: {e}")
        except Exception as e:  # a runtime's own untyped error: that runtime is out, the others still count
            failed.append(f"{runtime}: {type(e).__name__}: {first_line(e, 200)}")
    reason = "; ".join(failed) or None
    if not got:
        return PeakFigure(precision, None, None, threads, size, reason=reason)
    best = max(got, key=lambda k: got[k])
    return PeakFigure(
        precision, got[best], best, None if best == "numpy" else threads, size, "measured", got, reason
    )


_MEASURED: dict[tuple[str, int, int, int, tuple[str, ...] | None], PeakFigure] = {}


def measure_peaks(
    precisions: Sequence[str] = PEAK_PRECISIONS,
    *,
    size: int = DEFAULT_SIZE,
    threads: int,
    repeats: int = DEFAULT_REPEATS,
    fresh: bool = False,
    runtimes: Sequence[str] | None = None,
) -> dict[str, PeakFigure]:
    """``measure_peak`` for each precision with ``threads`` threads, kept per process (see above)."""
    if size < 8:
        raise ConfigError(f"peak GEMM size must be >= 8, got {size}", hint="e.g. --peak-size 2048")
    if repeats < 1:
        raise ConfigError(f"peak repeats must be >= 1, got {repeats}", hint="e.g. --repeats 5")
    if threads < 1:
        raise ConfigError(f"peak threads must be >= 1, got {threads}", hint="e.g. --threads 2")
    out: dict[str, PeakFigure] = {}
    for precision in precisions:
        key = (precision, size, threads, repeats, None if runtimes is None else tuple(runtimes))
        if fresh or key not in _MEASURED:
            _MEASURED[key] = measure_peak(precision, size, threads, repeats, runtimes)
        out[precision] = _MEASURED[key]
    return out


def peak_option(figs: Mapping[str, PeakFigure]) -> str:
    """``fp32=365.0,bf16=1722.0``: the ``--peak-gflops`` value of the figures that have one."""
    return ",".join(f"{k}={f.gflops}" for k, f in figs.items() if f.gflops is not None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure this host's GEMM peak GFLOP/s in FP32, BF16 and INT8.")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="M = N = K of the square GEMMs")
    p.add_argument("--threads", "-t", type=int, default=None, help="default: the usable cores")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls after a warm-up")
    p.add_argument("--output", "-o", default=None, help="also write the figures as JSON")
    p.add_argument("--runtimes", default=None, help="only these, e.g. openvino (default: all)")
    a = p.parse_args(argv)
    runtimes = None if a.runtimes is None else [r.strip() for r in a.runtimes.split(",") if r.strip()]
    figs = measure_peaks(
        PEAK_PRECISIONS,
        size=a.size,
        threads=a.threads or usable_cores(),
        repeats=a.repeats,
        runtimes=runtimes,
    )
    machine = machine_info()
    print(machine.summary())
    header = ("precision", "GFLOP/s", "runtime", "threads", "size", "every runtime (GFLOP/s)")
    rows = [
        [
            f.precision,
            "-" if f.gflops is None else f"{f.gflops:,.1f}",
            f.runtime or "-",
            "BLAS default" if f.threads is None else str(f.threads),
            f"{f.size}^3",
            ", ".join(f"{k} {v:,.1f}" for k, v in f.candidates.items()) or "-",
        ]
        for f in figs.values()
    ]
    print(text_table(header, rows))
    print(f"cxr-bench run ... --peak-gflops {peak_option(figs)}")
    for f in figs.values():
        if f.reason:
            print(f"note: {f.precision}: {f.reason}")
    if (busy := busy_note(machine)) is not None:
        print(f"note: {busy}")
    if a.output:
        doc = {"machine": machine.to_dict(), "peaks": {k: v.to_dict() for k, v in figs.items()}}
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
