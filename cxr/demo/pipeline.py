"""`cxr demo`: takes a ``DemoConfig``; makes every artefact of the study in one run directory, resumable."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.demo.config import DemoConfig
from cxr.demo.heatmap_grid import heatmap_grid
from cxr.demo.runner import Stage, StageRecord, run_stages

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    records: tuple[StageRecord, ...]
    index: Path
    comparison: str
    verdict: str


class _Paths:
    def __init__(self, cfg: DemoConfig) -> None:
        self.run = Path(cfg.run_dir)
        self.synthetic = self.run / "data"
        self.data = (
            Path(cfg.data) if cfg.data is not None else self.synthetic / "COVID-19_Radiography_Dataset"
        )
        self.manifest = self.run / "manifest.csv"
        self.members = self.run / "members"
        self.onnx = self.run / "onnx"
        self.stack = self.run / "stack"
        self.ensemble = self.run / "ensemble.onnx"
        self.ensemble_int8 = self.run / "ensemble.int8.onnx"
        self.eval = self.run / "eval"
        self.scan_input = self.run / "scan-input"
        self.scan_csv = self.run / "predict" / "results.csv"
        self.bench = self.run / "bench"
        self.heatmaps = self.run / "heatmaps"


def _stage_data(cfg: DemoConfig, p: _Paths) -> dict[str, Any]:
    from cxr.data.synthetic import SynthConfig, synthesize

    if p.synthetic.exists():
        shutil.rmtree(p.synthetic)
    res = synthesize(SynthConfig(out_dir=p.synthetic, per_class=cfg.per_class, seed=cfg.seed))
    return {"images": sum(res.counts.values()), "root": str(res.root), "synthetic": True}


def _stage_split(cfg: DemoConfig, p: _Paths) -> dict[str, Any]:
    from cxr.data.manifest import SplitConfig, build_manifest

    res = build_manifest(SplitConfig(data_dir=p.data, out=p.manifest, seed=cfg.seed))
    return {
        "images": len(res.manifest.rows),
        "counts": res.manifest.counts(),
        "duplicates": len(res.duplicates),
        "label_conflicts": len(res.conflicts),
        "skipped": len(res.skipped),
        "warnings": list(res.warnings),
    }


def _stage_train(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    import sys

    from cxr.train.config import load_config
    from cxr.train.run import train_all

    overrides = [f"run_dir={p.run}", f"data.manifest={p.manifest}", f"seed={cfg.seed}", *cfg.overrides]
    results = train_all(load_config(cfg.training_config, overrides), progress_stream=sys.stderr)
    out = {}
    for r in results:
        out[r.name] = {
            "val_macro_f1": r.metrics.get("macro_f1"),
            "val_accuracy": r.metrics.get("accuracy"),
            "epochs": r.epochs_run,
            "best_epoch": r.best_epoch,
            "seconds": round(r.seconds, 1),
        }
        echo(
            f"  {r.name:<14} val macro-F1 {r.metrics.get('macro_f1', float('nan')):.3f} "
            f"({r.epochs_run} epochs, {r.seconds:.0f} s)"
        )
    return out


def _stage_export(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    from cxr.demo.verdicts import export_verdicts
    from cxr.export.run_export import RunExportConfig, export_run, raise_for_failures

    res = export_run(
        RunExportConfig(
            run_dir=p.run,
            variants=cfg.variants,
            threads=cfg.threads,
            strict=False,
            max_calib_images=cfg.int8_calibration_images,
            int8_fast_bias_correction=cfg.int8_fast_bias_correction,
            int8_accuracy_control=cfg.int8_accuracy_control,
        )
    )
    verdicts = export_verdicts(res)
    for line in verdicts:
        echo(line)
    raise_for_failures(res)  # after the verdicts, so the console shows which member failed and why
    return {"report": str(p.onnx / "export_report.md"), "verdicts": verdicts}


def _stage_stack(cfg: DemoConfig, p: _Paths) -> dict[str, Any]:
    from cxr.stack.stack import MetaConfig, fit_meta

    res = fit_meta(MetaConfig(run_dir=p.run, seed=cfg.seed))
    return {
        "estimator": res.estimator,
        "params": res.params,
        "cv_log_loss": res.cv_score,
        "members": list(res.members),
        "n_train": res.n_train,
    }


def _stage_fuse(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    from cxr.demo.verdicts import fuse_verdicts
    from cxr.fuse import FuseConfig, fuse, run_members

    members, meta = run_members(p.run)
    res = fuse(
        members,
        meta,
        FuseConfig(
            out=p.ensemble,
            variants=cfg.variants,
            run_dir=p.run,
            threads=cfg.threads,
            seed=cfg.seed,
            heatmaps=True,
        ),
    )
    verdicts = fuse_verdicts(res)
    for line in verdicts:
        echo(line)
    files = {
        k: {"path": str(f.path), "mib": round(f.path.stat().st_size / 2**20, 1)} for k, f in res.files.items()
    }
    parity = res.parity
    return {
        "files": files,
        "skipped_variants": res.skipped_variants,
        "parity_max_abs": max(parity.max_abs_diff_probabilities, parity.max_abs_diff_member_probabilities),
        "end_to_end_top1_identical": None if res.end_to_end is None else res.end_to_end.top1_identical,
        "verdicts": verdicts,
    }


def _stage_evaluate(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    from cxr.evaluate import EvalConfig, evaluate

    res = evaluate(EvalConfig(run_dir=p.run, seed=cfg.seed))
    echo(res.table)
    echo(res.verdict)
    return {
        "table": res.table,
        "verdict": res.verdict,
        "stacking_helps": res.stacking_helps,
        "report": str(res.report_md),
    }


def _stage_scan(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    from cxr.data.manifest import load_manifest
    from cxr.runtime.predictor import Predictor, PredictorConfig
    from cxr.runtime.scan import ScanConfig, scan_folder
    from cxr.session import SessionConfig

    if p.scan_input.exists():
        shutil.rmtree(p.scan_input)
    p.scan_input.mkdir(parents=True)
    m = load_manifest(p.manifest)
    rows = m.split("test")
    for r in rows[: cfg.max_scan_images] if cfg.max_scan_images else rows:
        f = m.abspath(r)
        (p.scan_input / f"{r.label}__{f.name}").symlink_to(f.resolve())  # <class>__<file>
    predictor = Predictor.from_path(p.ensemble, PredictorConfig(session=SessionConfig(threads=cfg.threads)))
    res = scan_folder(predictor, ScanConfig(folder=p.scan_input, output=p.scan_csv, overwrite=True))
    echo(
        f"  scanned {res.found} test images: {res.predicted} predicted, {res.failed} failed, "
        f"{res.images_per_second:.1f} images/s on {res.provider} -> {p.scan_csv}"
    )
    grid = heatmap_grid(p.ensemble, p.scan_input, p.heatmaps, cfg.threads)
    echo(f"  heatmaps: {grid}" if isinstance(grid, Path) else f"  heatmaps: not drawn ({grid})")
    return {
        "heatmap_grid": str(grid),
        "found": res.found,
        "predicted": res.predicted,
        "failed": res.failed,
        "counts": res.counts,
        "images_per_s": res.images_per_second,
        "provider": res.provider,
        "output": str(p.scan_csv),
    }


def _stage_bench(cfg: DemoConfig, p: _Paths, echo: Echo) -> dict[str, Any]:
    from cxr.bench.report import format_terminal, write_outputs
    from cxr.bench.run import BenchConfig, run_bench

    variants = tuple(v for v in (p.ensemble_int8,) if v.exists())
    report = run_bench(
        BenchConfig(
            model=p.ensemble,
            variants=variants,
            precisions=("fp32",),  # each file as it is stored: FP32 beside its INT8 variant
            batch_sizes=(1, 8),
            threads=(cfg.threads,),
            folder=p.scan_input,
            iterations=cfg.bench_iterations,
            warmup=2,
            command="cxr demo (bench stage)",
        )
    )
    write_outputs(report, json_path=p.bench / "bench.json", markdown=p.bench / "bench.md")
    echo(format_terminal(report))
    return {"json": str(p.bench / "bench.json"), "markdown": str(p.bench / "bench.md")}


def build_stages(cfg: DemoConfig, echo: Echo) -> list[Stage]:
    p = _Paths(cfg)
    stages: list[Stage] = []
    if cfg.data is None:
        stages.append(
            Stage(
                "data",
                lambda: _stage_data(cfg, p),
                params={"per_class": cfg.per_class, "seed": cfg.seed},
                outputs=lambda: [p.data],
            )
        )
    stages += [
        Stage(
            "split",
            lambda: _stage_split(cfg, p),
            params={"seed": cfg.seed, "data": str(p.data)},
            inputs=lambda: [p.data] if cfg.data is None else [],
            outputs=lambda: [p.manifest],
        ),
        Stage(
            "train",
            lambda: _stage_train(cfg, p, echo),
            params={"config": str(cfg.training_config), "overrides": list(cfg.overrides)},
            inputs=lambda: [cfg.training_config, p.manifest],
            outputs=lambda: [p.members],
        ),
        Stage(
            "export",
            lambda: _stage_export(cfg, p, echo),
            params={"variants": list(cfg.variants)},
            outputs=lambda: [p.onnx],
        ),
        Stage("stack", lambda: _stage_stack(cfg, p), outputs=lambda: [p.stack]),
        Stage(
            "fuse",
            lambda: _stage_fuse(cfg, p, echo),
            params={"variants": list(cfg.variants)},
            outputs=lambda: [p.ensemble],
        ),
        Stage("evaluate", lambda: _stage_evaluate(cfg, p, echo), outputs=lambda: [p.eval]),
        Stage(
            "scan",
            lambda: _stage_scan(cfg, p, echo),
            params={"limit": cfg.max_scan_images},
            outputs=lambda: [p.scan_csv],
        ),
        Stage(
            "bench",
            lambda: _stage_bench(cfg, p, echo),
            params={"iterations": cfg.bench_iterations},
            outputs=lambda: [p.bench / "bench.json"],
        ),
    ]
    return stages


def run_demo(cfg: DemoConfig, echo: Echo = lambda s: None) -> DemoResult:
    """Run (or resume) every stage; write the index; return where everything is."""
    from cxr.demo.index import write_index

    p = _Paths(cfg)

    def start(stage: Stage, skip: bool) -> None:
        echo(f"== {stage.name}: {'up to date, skipped' if skip else 'running'}")

    def end(rec: StageRecord) -> None:
        if rec.ran:
            echo(f"   {rec.name} done in {rec.seconds:.1f} s")
        elif rec.summary.get("verdicts"):  # the checks of the run that made these artefacts
            echo("   verdicts when it last ran:")
            for line in rec.summary["verdicts"]:
                echo(line)

    records = run_stages(build_stages(cfg, echo), p.run, force=cfg.force, on_start=start, on_end=end)
    state = json.loads((p.run / "stages.json").read_text())
    index = write_index(p.run, records, state, synthetic=cfg.data is None)
    ev = state.get("evaluate", {}).get("summary", {})
    return DemoResult(p.run, tuple(records), index, ev.get("table", ""), ev.get("verdict", ""))
