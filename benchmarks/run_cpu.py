"""`make bench`: the project's published CPU numbers, in ONE ``study.py`` run (cxr-bench plus references).

Takes: a fused ensemble (``--model``; default: the paper ensemble, built first by ``paper_members.py``
under ``runs/paper/`` when missing), its INT8 variant (``--int8``; default ``<stem>.int8.onnx`` beside it),
optionally its member files and training run, this machine (all usable cores), and the real images in
``../shared/data/radiography-dev`` when they exist. Makes: ``<out>/bench/cpu.{json,md,png}`` (one
cxr-bench report, written by ``study.py``) and ``<out>/bench/summary.md``: README-ready rows with date,
machine, GEMM peaks and command.

The run has every row issue 18 asks for, at batch 1 and 8: cxr onnxruntime FP32 and INT8 (when the INT8
variant exists), cxr OpenVINO FP32, BF16 and auto (when openvino is installed; BF16 only where the CPU has it
and the model's ``cxr.verified_precisions`` accepts it, otherwise the report's notes say why), the members as
separate sessions, the members in OpenVINO with its own defaults (the peer a user gets without cxr: BF16
unverified), the same members quantized by hand with NNCF's defaults and run the same way (when nncf is
installed: ``nncf_peer.py``, built once beside the members), PyTorch FP32 eager and PyTorch best
(channels_last + bf16 autocast where the CPU has bf16), and the OpenVINO rows again with OpenVINO capped to
AVX2 (``--isa-cap``, default AVX2; ``isa_cap.py``): a stand-in for a clinic PC without AVX-512. Efficiency % divides by this host's GEMM peak measured at the start of the run in the precision
each row ran (``--peak-gflops`` overrides); reduced-precision rows carry their top-1 agreement with FP32 on
the real images. Copy the summary into ``benchmarks/README.md`` only when the run has no busy-CPU note.

Usage:
    python benchmarks/run_cpu.py                                 # the published numbers (long: ~30 min)
    python benchmarks/run_cpu.py --model runs/x/fused/ensemble.onnx --torch-run runs/x
    python benchmarks/run_cpu.py --quick                         # 64 px smoke run of the pipeline (never publish)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REAL_IMAGES = ROOT.parent / "shared" / "data" / "radiography-dev"
sys.path.insert(0, str(HERE))

import paper_members  # noqa: E402
from peak import PeakFigure  # noqa: E402

from cxr.bench.machine import MachineInfo  # noqa: E402
from cxr.bench.report import agreement_cell, load_report, markdown_table  # noqa: E402
from cxr.bench.types import BenchRow  # noqa: E402

HOW = {
    "inference": "one session",
    "members_separate": "separate sessions",
    "torch_eager": "PyTorch eager",
    "end_to_end": "end to end",
    "peer_openvino_defaults": "peer: members in OpenVINO with its defaults (unverified)",
}


NNCF_PEER_MODEL = "members.nncf-peer"  # the model name study.py gives the NNCF peer's rows


@dataclass(frozen=True)
class Models:
    fused: Path
    int8: Path | None = None
    members: Path | None = None  # folder of the member .onnx files
    torch_run: Path | None = None  # training run with members/<name> checkpoints


def paper_models(out: Path, quick: bool, threads: str) -> Models | None:
    """The paper ensemble under ``out`` (built by paper_members.py when missing); None when it cannot be."""
    fused = out / "fused" / "ensemble.onnx"
    if not fused.is_file():
        args = ["--out", str(out), "--threads", threads, "--build-only"] + (["--size", "64"] if quick else [])
        if paper_members.main(args) != 0 or not fused.is_file():
            return None
    int8 = fused.with_name("ensemble.int8.onnx")
    return Models(
        fused,
        int8 if int8.is_file() else None,
        out / "onnx" if (out / "onnx").is_dir() else None,
        out if (out / "members").is_dir() else None,
    )


def given_models(a: argparse.Namespace) -> Models:
    int8 = a.int8 or a.model.with_name(f"{a.model.stem}.int8.onnx")
    return Models(a.model, int8 if int8.is_file() else None, a.members, a.torch_run)


def bench_command(models: Models, a: argparse.Namespace, out: Path) -> list[str]:
    """The one study.py command line: every provider x precision x batch the issue asks for."""
    openvino = importlib.util.find_spec("openvino") is not None
    nncf = importlib.util.find_spec("nncf") is not None
    cmd = [*paper_members.study(), "--model", str(models.fused)]
    if models.int8 is not None:
        cmd += ["--variant", str(models.int8)]
    if models.members is not None and not a.no_members:
        cmd += ["--member-models", str(models.members)]
        if openvino:
            cmd += ["--openvino-peer"]  # the members in OpenVINO with its defaults: the peer to beat
        if openvino and nncf and not a.no_nncf_peer:
            cmd += ["--nncf-peer"]  # the same members quantized by hand with NNCF's defaults
        elif openvino and not a.no_nncf_peer:
            print("no NNCF peer row: nncf is not installed (pip install -e '.[train]')", file=sys.stderr)
    if models.torch_run is not None:
        cmd += ["--torch-run", str(models.torch_run)]
    cmd += [
        "-p",
        "cpu,openvino" if openvino else "cpu",
        "--precision",
        "auto,fp32,bf16" if openvino else "auto",
    ]
    cmd += ["-b", "1" if a.quick else a.batch_sizes, "-t", a.threads]
    cmd += ["--warmup", str(1 if a.quick else a.warmup), "--iterations", str(3 if a.quick else a.iterations)]
    folder = None if a.no_agreement else a.agreement_folder or (REAL_IMAGES if REAL_IMAGES.is_dir() else None)
    if folder is not None:
        cmd += [
            "--agreement-folder",
            str(folder),
            "--agreement-images",
            str(16 if a.quick else a.agreement_images),
        ]
    if a.peak_gflops:
        cmd += ["--peak-gflops", a.peak_gflops]
    if a.quick:
        cmd += ["--peak-size", "512"]
    if openvino and a.isa_cap.lower() != "none":
        cmd += ["--isa-cap", a.isa_cap]
    return [
        *cmd,
        "-o",
        str(out / "cpu.json"),
        "--markdown",
        str(out / "cpu.md"),
        "--plot",
        str(out / "cpu.png"),
    ]


def _how(r: BenchRow) -> str:
    if r.kind == "torch_eager" and r.mode == "best":
        return "PyTorch best"
    if r.model.startswith(NNCF_PEER_MODEL):
        return "peer: members quantized with NNCF's defaults, in OpenVINO with its defaults (unverified)"
    return HOW[r.kind]


def _cells(r: BenchRow) -> list[str]:
    how = _how(r)
    if r.kind == "members_separate":
        how = f"{r.sessions} {how}"
    return [
        r.model,
        how,
        r.provider,
        r.precision_label(),
        str(r.batch_size),
        "default" if r.threads is None else str(r.threads),
        f"{r.latency_ms.p50:.1f}",
        f"{r.latency_ms.p90:.1f}",
        f"{r.latency_ms.p99:.1f}",
        f"{r.latency_per_image_ms.mean:.1f}",
        f"{r.throughput_ips:.2f}",
        "-" if r.efficiency_pct is None else f"{r.efficiency_pct:.0f} / {r.peak_gflops:,.0f}",
        agreement_cell(r),
        f"{r.peak_rss_mb:.0f}",
    ]


def peaks_line(machine: MachineInfo) -> str:
    """``FP32 365 GFLOP/s (numpy, 2 threads, 2048^3); ...`` from the figures study.py recorded."""
    figs = machine.extra.get("peak_figures") or {}
    if not figs:
        return machine.peaks_line()
    line = "; ".join(PeakFigure.from_dict(f).describe() for f in figs.values())
    capped = machine.extra.get("peak_figures_capped") or {}
    if capped.get("figures"):
        each = "; ".join(PeakFigure.from_dict(f).describe() for f in capped["figures"].values())
        line += f". Capped to {capped.get('cap')} (OpenVINO only): {each}"
    return line


def summary_markdown(bench_dir: Path) -> str:
    """One compact table over every report in ``bench_dir``, with date, machine, peaks and commands."""
    reports = [load_report(p) for p in sorted(bench_dir.glob("*.json"))]
    if not reports:
        return "no cxr-bench reports found\n"
    header = ("model", "run as", "provider", "precision", "batch", "threads", "p50 ms", "p90 ms", "p99 ms")
    header += ("ms/img", "img/s", "eff % / peak GFLOP/s", "top-1 vs FP32 % (images)", "peak RSS MB")
    rows = [_cells(r) for rep in reports for r in rep.rows if r.concurrency == 1]
    first = reports[0]
    lines = [
        f"- date: {first.created}",
        f"- machine: {first.machine.summary()}",
        f"- GEMM peaks (measured at the start of the run unless given): {peaks_line(first.machine)}",
        *(f"- command: `{rep.command}`" for rep in reports),
        "",
        markdown_table(header, rows),
        "",
        *(f"- note: {n}" for rep in reports for n in rep.notes),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Publishable CPU benchmark of a fused ensemble, in one run.")
    p.add_argument("--model", type=Path, default=None, help="fused ensemble (default: the paper ensemble)")
    p.add_argument("--int8", type=Path, default=None, help="its INT8 variant (default: <stem>.int8.onnx)")
    p.add_argument("--members", type=Path, default=None, help="folder of its member .onnx files")
    p.add_argument(
        "--torch-run", type=Path, default=None, help="training run with members/<name> checkpoints"
    )
    p.add_argument("--no-members", action="store_true", help="skip the separate-sessions rows")
    p.add_argument("--no-nncf-peer", action="store_true", help="skip the NNCF-default INT8 peer")
    p.add_argument(
        "--isa-cap", default="AVX2", help="OpenVINO rows again capped to this ISA; 'none' skips them"
    )
    p.add_argument("--quick", action="store_true", help="64 px, batch 1, 3 iterations: a smoke run only")
    p.add_argument(
        "--out", type=Path, default=None, help="default runs/paper (runs/paper-quick with --quick)"
    )
    p.add_argument("--threads", default=str(len(os.sched_getaffinity(0))), help="default: the usable cores")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--agreement-folder", type=Path, default=None, help=f"default {REAL_IMAGES} when present")
    p.add_argument("--agreement-images", type=int, default=100)
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument("--peak-gflops", default=None, help="override: N (FP32) or fp32=N,bf16=N,int8=N")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = a.out or ROOT / "runs" / ("paper-quick" if a.quick else "paper")
    models = given_models(a) if a.model is not None else paper_models(out, a.quick, a.threads)
    if models is None:
        print("the paper ensemble could not be built (see above); pass --model FUSED.onnx", file=sys.stderr)
        return 2
    bench = out / "bench"
    if bench.exists():
        shutil.rmtree(bench)
    cmd = bench_command(models, a, bench)
    print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if rc != 0:
        return rc
    summary = bench / "summary.md"
    summary.write_text(summary_markdown(bench))
    print(summary.read_text())
    print(f"wrote {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
