"""benchmarks/isa_cap.py: OpenVINO capped to an ISA (ONEDNN_MAX_CPU_ISA) in a child process, as a stand-in
for a clinic PC without AVX-512: the cap really changes OpenVINO's kernels, the capped defaults, the child's
options, and the capped rows merged into one report under their own names."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.bench.run import BenchConfig, run_bench
from cxr.errors import ConfigError
from tests.test_bench_support import benchmark

isa_cap = benchmark("isa_cap")
study = benchmark("study")
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
FAST = {"warmup": 1, "iterations": 2, "threads": (1,), "peak_gflops": 100.0}

PROBE = """
import json, numpy as np, openvino as ov, openvino.opset13 as ops
a = ops.parameter([1, 16, 16, 16], ov.Type.f32, name="A")
w = ops.constant(np.random.default_rng(0).standard_normal((16, 16, 3, 3)).astype(np.float32))
model = ov.Model([ops.max_pool(ops.convolution(a, w, [1, 1], [1, 1], [1, 1], [1, 1]), [2, 2], [1, 1],
                  [0, 0], [0, 0], [2, 2]).output(0)], [a], "probe")
compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
print(json.dumps(sorted({str(op.get_rt_info()["primitiveType"].astype(str))
                         for op in compiled.get_runtime_model().get_ops()})))
"""


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_the_cap_turns_openvinos_kernels_to_avx2() -> None:
    env = {**os.environ, isa_cap.ISA_ENV: "AVX2"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    kernels = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("avx2" in k for k in kernels), kernels  # the convolution and the pooling
    assert not any("avx512" in k for k in kernels), kernels


@pytest.mark.parametrize(
    ("env", "defaults", "warned"),
    [
        ({}, {}, False),
        ({"ONEDNN_MAX_CPU_ISA": "avx2"}, {"INFERENCE_PRECISION_HINT": "f32"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}, {"INFERENCE_PRECISION_HINT": "f32"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {}, True),
    ],
)
def test_openvino_defaults_under_a_cap(env: dict[str, str], defaults: dict[str, str], warned: bool) -> None:
    assert isa_cap.openvino_defaults(env) == defaults
    warnings = isa_cap.row_warnings(env)
    assert bool(warnings) == warned
    assert all(env["ONEDNN_MAX_CPU_ISA"].upper() in w for w in warnings)


def test_unknown_cap_is_refused_with_the_choices() -> None:
    assert isa_cap.check_cap("avx2") == "AVX2"
    with pytest.raises(ConfigError, match="AVX512_CORE_VNNI"):
        isa_cap.check_cap("avx3")


@pytest.mark.parametrize("peers", [(), ("--openvino-peer",), ("--openvino-peer", "--nncf-peer")])
def test_the_child_runs_openvino_fp32_rows_and_the_peers_only(peers: tuple[str, ...], tmp_path: Path) -> None:
    a = study.parse_args(
        ["-m", "f.onnx", "--variant", "f.int8.onnx", "--member-models", "onnx", "--torch-run", "run"]
        + ["-p", "cpu,openvino", "--precision", "auto,fp32,bf16", "-b", "1,8", "--isa-cap", "AVX2", *peers]
    )
    argv = isa_cap.child_argv(a, tmp_path / "capped.json")
    assert argv[argv.index("-p") + 1] == "openvino" and argv[argv.index("--precision") + 1] == "fp32"
    assert argv[argv.index("--variant") + 1] == "f.int8.onnx" and argv[argv.index("-b") + 1] == "1,8"
    assert argv[argv.index("--peak-runtimes") + 1] == "openvino"  # numpy and onnxruntime ignore the cap
    assert "--torch-run" not in argv and "--isa-cap" not in argv
    assert ("--no-separate-members" in argv) == bool(peers)
    assert all(p in argv for p in peers)


def test_merge_renames_the_capped_rows_and_keeps_their_peaks(fused_model: Path) -> None:
    cfg = BenchConfig(model=fused_model, **FAST)
    report, capped = run_bench(cfg), run_bench(cfg)
    figs = {"int8": {"precision": "int8", "gflops": 12.0, "runtime": "openvino", "threads": 1, "size": 8}}
    machine = dataclasses.replace(capped.machine, extra={"peak_figures": figs})
    capped = dataclasses.replace(capped, notes=("slow",), machine=machine)
    merged = isa_cap.merge(report, capped, "AVX2")
    assert [r.model for r in merged.rows] == [r.model for r in report.rows] + [
        f"{r.model} [AVX2]" for r in capped.rows
    ]
    assert merged.machine.extra["peak_figures_capped"] == {"cap": "AVX2", "figures": figs}
    assert "AVX2 cap: slow" in merged.notes
    assert len({r.label() for r in merged.rows}) == len(merged.rows)  # told apart in every table
