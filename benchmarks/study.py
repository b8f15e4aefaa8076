"""The study's benchmark run: one ``cxr-bench run`` plus the reference rows the published tables compare with.

Takes the options of ``cxr-bench run`` and the study's own: the fused model's member files
(``--member-models``: the five-separate-sessions rows; with ``--openvino-peer`` also the members in OpenVINO
with its defaults, with ``--nncf-peer`` the members quantized by hand with NNCF's defaults and run the same
way, ``nncf_peer.py``), a training run (``--torch-run``: PyTorch FP32 eager and "PyTorch best"), real images
(``--agreement-folder``: top-1 agreement of reduced-precision rows with FP32) and a chart (``--plot``).
This host's GEMM peaks are measured at the start (``peak.py``; ``--peak-gflops`` overrides, and
``--no-measure-peak`` skips the rest). ``--isa-cap AVX2`` adds the OpenVINO rows measured again with OpenVINO
capped to that ISA in a child process (``isa_cap.py``). Makes one cxr-bench report (JSON, Markdown, PNG) and prints its table.
``run_cpu.py`` (``make bench``) and ``paper_members.py`` run it.

Usage:
    python benchmarks/study.py --model FUSED.onnx --variant FUSED.int8.onnx --member-models RUN/onnx \\
        --torch-run RUN -p cpu,openvino --precision auto,fp32,bf16 -b 1,8 -o out.json --plot out.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import agreement  # noqa: E402
import isa_cap  # noqa: E402
import nncf_peer  # noqa: E402
import peak  # noqa: E402
import plot  # noqa: E402
import references  # noqa: E402
import torch_rows  # noqa: E402

from cxr.bench.config import BenchConfig  # noqa: E402
from cxr.bench.inputs import check_batch_sizes, inspect_model, list_images  # noqa: E402
from cxr.bench.machine import resolve_peaks, usable_cores  # noqa: E402
from cxr.bench.report import format_terminal, write_outputs  # noqa: E402
from cxr.bench.run import Reference, run_bench  # noqa: E402
from cxr.bench.types import BenchReport, BenchRow  # noqa: E402
from cxr.cli.bench import DEFAULT_ITERATIONS, parse_ints, parse_names, parse_threads  # noqa: E402
from cxr.errors import ConfigError, CxrError  # noqa: E402
from cxr.session import SessionConfig  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", "-m", type=Path, required=True, help="fused ensemble or single member")
    p.add_argument("--variant", type=Path, action="append", default=[], help="another precision; repeatable")
    p.add_argument("--provider", "-p", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-sizes", "-b", default="1")
    p.add_argument("--threads", "-t", default="default")
    p.add_argument("--concurrency", "-c", default="1")
    p.add_argument("--no-pool", action="store_true")
    p.add_argument("--folder", type=Path, default=None, help="images for end-to-end rows")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", "-n", type=int, default=DEFAULT_ITERATIONS)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--strict-provider", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peak-gflops", default=None, help="N (FP32) or fp32=N,bf16=N,int8=N; the rest is measured"
    )
    p.add_argument("--no-measure-peak", action="store_true", help="measure no peak that is not given")
    p.add_argument("--peak-size", type=int, default=peak.DEFAULT_SIZE, help="M = N = K of the peak GEMMs")
    p.add_argument("--peak-runtimes", default=None, help="measure peaks with these only (e.g. openvino)")
    p.add_argument("--member-models", type=Path, action="append", default=[], help="member files or folder")
    p.add_argument("--openvino-peer", action="store_true", help="with --member-models: OpenVINO defaults")
    p.add_argument(
        "--nncf-peer", action="store_true", help="with --member-models: NNCF-default INT8, OpenVINO defaults"
    )
    p.add_argument(
        "--no-separate-members", action="store_true", help="with --member-models: the peers' rows only"
    )
    p.add_argument(
        "--isa-cap",
        default=None,
        help=f"also the OpenVINO rows capped to this ISA ({', '.join(isa_cap.CAPS)})",
    )
    p.add_argument(
        "--torch-run", type=Path, default=None, help="training run with members/<name> checkpoints"
    )
    p.add_argument("--no-torch-best", action="store_true", help="PyTorch FP32 eager only")
    p.add_argument("--agreement-folder", type=Path, default=None, help="real images for top-1 agreement")
    p.add_argument("--agreement-images", type=int, default=100)
    p.add_argument("--output", "-o", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="latency/throughput PNG (matplotlib)")
    p.add_argument("--wide", action="store_true", help="print every column")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-row progress")
    return p.parse_args(argv)


def config(a: argparse.Namespace, peaks: dict[str, float], command: str) -> BenchConfig:
    return BenchConfig(
        model=a.model,
        variants=tuple(a.variant),
        session=SessionConfig(strict_provider=a.strict_provider),
        providers=parse_names(a.provider),
        precisions=parse_names(a.precision),
        batch_sizes=parse_ints(a.batch_sizes, "--batch-sizes"),
        threads=parse_threads(a.threads),
        concurrency=parse_ints(a.concurrency, "--concurrency"),
        pool=not a.no_pool,
        warmup=a.warmup,
        iterations=a.iterations,
        min_seconds=a.min_seconds,
        folder=a.folder,
        peak_gflops=peaks or None,
        seed=a.seed,
        command=command,
    )


def measured_peaks(a: argparse.Namespace) -> tuple[dict[str, float], dict[str, dict[str, Any]], str]:
    """The GEMM peaks to divide by, every figure's details, and where they came from."""
    given, source = resolve_peaks(a.peak_gflops)
    todo = [] if a.no_measure_peak else [p for p in peak.PEAK_PRECISIONS if p not in given]
    threads = parse_threads(a.threads)[0] or usable_cores()
    runtimes = None if a.peak_runtimes is None else parse_names(a.peak_runtimes)
    measured = peak.measure_peaks(todo, size=a.peak_size, threads=threads, runtimes=runtimes) if todo else {}
    figs = {k: f.to_dict() for k, f in measured.items()}
    figs.update({k: peak.PeakFigure(k, v, source, None, 0, source).to_dict() for k, v in given.items()})
    peaks = {k: float(f["gflops"]) for k, f in figs.items() if f["gflops"] is not None}
    return peaks, figs, ("measured" if measured else source)


def study(a: argparse.Namespace, command: str) -> BenchReport:
    """Check every input, measure the peaks, run cxr-bench with the references asked for, add agreement."""
    if a.plot is not None and plot.matplotlib_missing():
        raise plot.missing_error()
    if a.torch_run is not None and not a.torch_run.is_dir():
        raise ConfigError(f"--torch-run {a.torch_run} is not a folder", hint="pass the training run folder")
    batch_sizes = config(a, {}, command).batch_sizes  # refuses bad options before anything is measured
    main = inspect_model(a.model)
    files = (main, *(inspect_model(v) for v in a.variant))
    cap = None if a.isa_cap is None else isa_cap.check_cap(a.isa_cap)
    if (a.nncf_peer or a.openvino_peer or a.no_separate_members) and not a.member_models:
        raise ConfigError(
            "--openvino-peer, --nncf-peer and --no-separate-members need --member-models",
            hint="pass the folder of the fused model's member .onnx files",
        )
    members = references.resolve_members(main, a.member_models) if a.member_models else ()
    for m in members:
        check_batch_sizes(m, batch_sizes)
    notes: list[str] = []
    grays = None
    if a.agreement_folder is not None:
        grays = agreement.load_images(a.agreement_folder, a.agreement_images, notes)
    peaks, figs, source = measured_peaks(a)
    cfg = config(a, peaks, command)
    refs = _references(a, members, grays, notes)
    if a.torch_run is not None:
        refs.append(torch_rows.torch_reference(a.torch_run, grays, best=not a.no_torch_best))
    report = run_bench(cfg, on_row=None if a.quiet else progress, references=refs)
    if grays is not None:
        report = agreement.add_agreement(report, cfg, files, grays)
    machine = dataclasses.replace(report.machine, peak_source=source, extra={"peak_figures": figs})
    study_options = json.loads(json.dumps(vars(a), default=str))
    report = dataclasses.replace(
        report,
        machine=machine,
        config={**report.config, "study": study_options},
        notes=(*notes, *report.notes),
    )
    if cap is None:
        return report
    with tempfile.TemporaryDirectory(prefix="cxr-isa-cap-") as tmp:  # merged below: one report, one file
        capped = isa_cap.run_capped(a, cap, Path(tmp) / f"{cap.lower()}.json")
    return isa_cap.merge(report, capped, cap)


def _references(
    a: argparse.Namespace, members: tuple[Any, ...], grays: tuple[Any, ...] | None, notes: list[str]
) -> list[Reference]:
    """The member rows asked for: separate sessions, the OpenVINO-defaults peer, the NNCF peer."""
    refs: list[Reference] = []
    if not members:
        return refs
    if not a.no_separate_members:
        refs.append(references.members_reference(members, a.strict_provider))
    agree = None if grays is None else references.MemberAgreement(members, grays)
    if a.openvino_peer:
        refs.append(references.peer_reference(members, agree=agree))
    if a.nncf_peer:
        folder = a.agreement_folder
        used = () if folder is None else agreement.spread(list_images(folder), a.agreement_images)
        files = nncf_peer.peer_files(members, nncf_peer.Calibration.from_folder(folder, used), notes)
        peer = references.Peer(
            files,
            model="members.nncf-peer",
            what="NNCF-default INT8 peer",
            warning="peer: the members quantized by hand with NNCF's defaults, float ops in OpenVINO's "
            "default precision ({precision})",
            precision="int8",
        )
        refs.append(references.peer_reference(members, peer, agree))
    return refs


def progress(row: BenchRow) -> None:
    print(
        f"  {row.kind} {row.label()} {row.provider} b{row.batch_size} t{row.threads or 'default'} "
        f"c{row.concurrency} {row.mode}: p50 {row.latency_ms.p50:.2f} ms, {row.throughput_ips:.1f} img/s",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    try:
        report = study(a, shlex.join(["benchmarks/study.py", *argv]))
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_terminal(report, wide=a.wide))
    for path in write_outputs(report, json_path=a.output, markdown=a.markdown):
        print(f"wrote {path}")
    if a.plot is not None:
        print(f"wrote {plot.write_plot(report, a.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
