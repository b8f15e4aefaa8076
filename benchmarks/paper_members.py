"""The paper's five members at 224 px (random weights): build, export, quantize, fuse, then bench them.

Takes: an output folder (default ``runs/paper``, gitignored), the input size, thread count and providers.
Makes, with the project's own tools:
- ``members/<name>/best.*``: random-weight checkpoints (``cxr.train.checkpoint.save_checkpoint``), so
  ``study.py``'s PyTorch eager reference can load them;
- ``onnx/<name>.onnx`` (``cxr.export.onnx_export.export_onnx``) and ``onnx/<name>.int8.onnx``
  (``cxr.export.quantize.make_int8``, static QDQ calibrated on real or synthetic images);
- ``stack/meta.onnx``: a logistic-regression meta-learner fitted on synthetic member outputs
  (``cxr.stack.to_onnx.convert_meta``);
- ``fused/ensemble.onnx`` + ``fused/ensemble.int8.onnx`` (``cxr.fuse.fuse``);
- ``bench/*.json|md|png``: ``study.py`` runs (cxr-bench plus references): fused FP32 vs INT8 at batch 1
  and 8, beside the five members as
  separate sessions and the PyTorch eager ensemble, with efficiency % against the machine's FP32 peak;
  with ``--per-member``, each member's FP32 vs INT8 too.
Weights are random: the numbers are about speed and memory only (INT8 agreement is not checked).
Heavy: ~1 GB of ONNX and many minutes of CPU at 224 px. ``--size 64`` makes a quick smoke run.
Files that already exist are reused (``--force`` rebuilds).

Usage: python benchmarks/paper_members.py [--size 224] [--threads 2] [--providers cpu] [--per-member]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "paper"
SHARED_DATA = ROOT.parent / "shared" / "data"
NAMES: tuple[str, ...] = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "xception")
TOOLS = {
    "checkpoint": "cxr.train.checkpoint",
    "export": "cxr.export.onnx_export",
    "quantize": "cxr.export.quantize",
    "meta": "cxr.stack.to_onnx",
    "fuse": "cxr.fuse._fuse",
}


@dataclass(frozen=True)
class PaperConfig:
    out: Path = DEFAULT_OUT
    size: int = 224
    names: tuple[str, ...] = NAMES
    int8: bool = True
    calibration_images: int = 16
    seed: int = 0
    threads: int | None = None
    force: bool = False


@dataclass
class PaperModels:
    out: Path
    members: dict[str, Path] = field(default_factory=dict)
    int8_members: dict[str, Path] = field(default_factory=dict)
    meta: Path | None = None
    fused: Path | None = None
    fused_int8: Path | None = None
    skipped: list[str] = field(default_factory=list)


def available(tool: str) -> bool:
    try:
        return importlib.util.find_spec(TOOLS[tool]) is not None
    except ModuleNotFoundError:
        return False


def log(msg: str) -> None:
    print(f"[paper {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def gray_images(n: int, seed: int) -> list[np.ndarray]:
    """Real chest X-rays from ../shared/data when present, else smooth random images (same sizes)."""
    from cxr.imaging.decode import decode_gray

    files = sorted((SHARED_DATA / "radiography-dev").rglob("*.png")) if SHARED_DATA.is_dir() else []
    if files:
        step = max(1, len(files) // n)
        return [decode_gray(f) for f in files[::step][:n]]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    out = []
    for _ in range(n):
        a, b = rng.uniform(-1, 1, 2)
        img = 128 + 80 * (a * xx + b * yy) + rng.normal(0, 20, (256, 256))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _checkpoint(member_dir: Path, name: str, model: object, cfg: PaperConfig) -> str | None:
    """Save a random-weight checkpoint for the PyTorch reference; returns its sha256."""
    if not available("checkpoint"):
        return None
    from cxr.labels import CLASSES
    from cxr.spec import PreprocessSpec
    from cxr.train.backbones import resolve_timm_name
    from cxr.train.checkpoint import CheckpointInfo, read_checkpoint_info, save_checkpoint, versions

    if (member_dir / "best.json").is_file() and not cfg.force:
        return read_checkpoint_info(member_dir).sha256
    info = CheckpointInfo(
        name=name,
        timm_name=resolve_timm_name(name),
        classes=CLASSES,
        preprocess=PreprocessSpec.square(cfg.size),
        metrics={},
        sha256="",
        epoch=0,
        config={"random_weights": True, "seed": cfg.seed},
        versions=versions(),
        backbone=name,
    )
    return save_checkpoint(member_dir, "best", model, info).sha256  # type: ignore[arg-type]


def build_members(cfg: PaperConfig, models: PaperModels) -> None:
    from cxr.labels import CLASSES
    from cxr.spec import ModelMetadata, PreprocessSpec
    from cxr.train.backbones import create_backbone, resolve_timm_name

    if not available("export"):
        models.skipped.append(f"export: {TOOLS['export']} is not available")
        return
    from cxr.export.onnx_export import ExportConfig, export_onnx

    for i, name in enumerate(cfg.names):
        onnx_path = cfg.out / "onnx" / f"{name}.onnx"
        if onnx_path.is_file() and not cfg.force:
            models.members[name] = onnx_path
            continue
        t0 = time.perf_counter()
        model = create_backbone(name, len(CLASSES), pretrained=False, seed=cfg.seed + i).eval()
        sha = _checkpoint(cfg.out / "members" / name, name, model, cfg)
        card = {"kind": "member", "name": name, "timm_name": resolve_timm_name(name), "random_weights": True}
        if sha:
            card["checkpoint_sha256"] = sha
        meta = ModelMetadata(
            classes=CLASSES,
            preprocess=PreprocessSpec.square(cfg.size),
            input_format="float_normalized",
            card=card,
        )
        res = export_onnx(
            model,
            ExportConfig(
                out=onnx_path,
                metadata=meta,
                input_size=(cfg.size, cfg.size),
                check_batches=(1, 2),
                threads=cfg.threads,
                seed=cfg.seed,
            ),
        )
        models.members[name] = res.path
        log(
            f"exported {name}: {res.size_bytes / 2**20:.0f} MiB, {res.flops_per_image / 1e9:.1f} GFLOP/img, {time.perf_counter() - t0:.0f} s"
        )


def build_int8(cfg: PaperConfig, models: PaperModels) -> None:
    if not cfg.int8:
        return
    if not available("quantize"):
        models.skipped.append(f"int8: {TOOLS['quantize']} is not available")
        return
    from cxr.export.quantize import Int8Config, make_int8, variant_path
    from cxr.imaging.preprocess import to_model_input
    from cxr.spec import PreprocessSpec

    grays = gray_images(cfg.calibration_images + 8, cfg.seed)
    x = to_model_input(grays, PreprocessSpec.square(cfg.size), normalized=True).astype(np.float32)
    calib, verify = x[: cfg.calibration_images], x[cfg.calibration_images :]
    for name, src in models.members.items():
        out = variant_path(src, "int8")
        if out.is_file() and not cfg.force:
            models.int8_members[name] = out
            continue
        t0 = time.perf_counter()
        # random weights: agreement with FP32 means nothing here, so the gate is (almost) off, and so are the
        # slow accuracy settings (full bias correction, accuracy control): this build is for speed only
        int8_cfg = Int8Config(
            calibration=calib,
            verify_inputs=verify,
            min_agreement=1e-6,
            threads=cfg.threads,
            fast_bias_correction=True,
            accuracy_control=False,
        )
        res = make_int8(src, int8_cfg)
        if res.path is None:
            models.skipped.append(f"int8 {name}: {res.reason}")
            continue
        models.int8_members[name] = res.path
        log(f"int8 {name}: {res.size_bytes / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s")


def build_meta(cfg: PaperConfig, models: PaperModels) -> None:
    out = cfg.out / "stack" / "meta.onnx"
    if out.is_file() and not cfg.force:
        models.meta = out
        return
    if not available("meta") or importlib.util.find_spec("sklearn") is None:
        models.skipped.append("meta-learner: cxr.stack.to_onnx or scikit-learn is not available")
        return
    from sklearn.linear_model import LogisticRegression

    from cxr.labels import CLASSES
    from cxr.stack.to_onnx import convert_meta

    rng = np.random.default_rng(cfg.seed)
    k, m = len(CLASSES), len(cfg.names)
    y = np.arange(400) % k
    feats = rng.dirichlet(np.ones(k), size=(400, m)) + 0.5 * np.eye(k)[y][:, None, :]
    feats = (feats / feats.sum(-1, keepdims=True)).reshape(400, m * k)
    est = LogisticRegression(max_iter=500).fit(feats, y)
    info = {
        "member_order": list(cfg.names),
        "type": "logistic_regression",
        "source": "paper_members.py (synthetic)",
    }
    models.meta = convert_meta(est, n_members=m, classes=CLASSES, out=out, info=info).path


def build_fused(cfg: PaperConfig, models: PaperModels) -> None:
    out = cfg.out / "fused" / "ensemble.onnx"
    int8_out = out.with_name("ensemble.int8.onnx")
    int8_pending = len(models.int8_members) == len(cfg.names) and not int8_out.is_file()
    if out.is_file() and not cfg.force and not int8_pending:  # fused again when the INT8 members came later
        models.fused = out
        models.fused_int8 = int8_out if int8_out.is_file() else None
        return
    if models.meta is None or len(models.members) != len(cfg.names) or not available("fuse"):
        models.skipped.append("fuse: members, meta-learner or cxr.fuse missing")
        return
    from cxr.fuse import FuseConfig, fuse

    t0 = time.perf_counter()
    variants = ("int8",) if len(models.int8_members) == len(cfg.names) else ()
    res = fuse(
        [models.members[n] for n in cfg.names],
        models.meta,
        FuseConfig(
            out=out,
            variants=variants,
            simplify=False,
            batches=(1, 2),
            threads=cfg.threads,
            seed=cfg.seed,
            # OpenVINO BF16 is offered only after its agreement check on real radiographs
            check_images=SHARED_DATA / "radiography-dev" if SHARED_DATA.is_dir() else None,
        ),
    )
    models.fused = res.path
    models.fused_int8 = res.files["int8"].path if "int8" in res.files else None
    log(f"fused {', '.join(res.files)} in {time.perf_counter() - t0:.0f} s")


def build(cfg: PaperConfig) -> PaperModels:
    models = PaperModels(cfg.out)
    for step in (build_members, build_int8, build_meta, build_fused):
        step(cfg, models)
    for s in models.skipped:
        log(f"skipped {s}")
    return models


def study() -> list[str]:
    """The command line of ``study.py``: cxr-bench plus the study's reference rows."""
    return [sys.executable, str(Path(__file__).resolve().with_name("study.py"))]


@dataclass(frozen=True)
class BenchPlan:
    providers: str = "cpu"
    batch_sizes: str = "1,8"
    threads: str = "default"
    warmup: int = 2
    iterations: int = 10
    peak_gflops: float | None = None
    per_member: bool = False


def bench_commands(models: PaperModels, plan: BenchPlan, out: Path) -> list[list[str]]:
    common = ["-p", plan.providers, "-b", plan.batch_sizes, "-t", plan.threads, "--warmup", str(plan.warmup)]
    common += ["--iterations", str(plan.iterations)]
    if plan.peak_gflops:
        common += ["--peak-gflops", str(plan.peak_gflops), "--no-measure-peak"]
    torch_ref = ["--torch-run", str(models.out)] if (models.out / "members").is_dir() else []
    cmds = []
    if models.fused is not None:
        cmd = [*study(), "--model", str(models.fused)]
        if models.fused_int8 is not None:
            cmd += ["--variant", str(models.fused_int8)]
        cmd += ["--member-models", str(models.fused.parent.parent / "onnx"), *torch_ref, *common]
        cmd += [
            "-o",
            str(out / "ensemble.json"),
            "--markdown",
            str(out / "ensemble.md"),
            "--plot",
            str(out / "ensemble.png"),
        ]
        cmds.append(cmd)
    if plan.per_member or models.fused is None:
        for name, path in models.members.items():
            cmd = [*study(), "--model", str(path)]
            if name in models.int8_members:
                cmd += ["--variant", str(models.int8_members[name])]
            cmd += [
                *torch_ref,
                *common,
                "-o",
                str(out / f"{name}.json"),
                "--markdown",
                str(out / f"{name}.md"),
            ]
            cmds.append(cmd)
    return cmds


def run_commands(cmds: list[list[str]]) -> None:
    for cmd in cmds:
        shown = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
        log(f"$ {shown}")
        subprocess.run(cmd, check=True, cwd=ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--threads",
        default=str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "default"),
    )
    p.add_argument("--providers", default="cpu")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--peak-gflops", type=float, default=None, help="default: $CXR_PEAK_GFLOPS")
    p.add_argument("--per-member", action="store_true", help="also bench each member FP32 vs INT8")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--force", action="store_true", help="rebuild files that exist")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    threads = None if a.threads == "default" else int(a.threads.split(",")[0])
    cfg = PaperConfig(out=a.out, size=a.size, int8=not a.no_int8, threads=threads, force=a.force)
    missing = [t for t in TOOLS if not available(t)]
    if missing:
        log(f"not available yet: {', '.join(TOOLS[t] for t in missing)}; running what can run")
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
        log("torch and timm are needed to build the members (pip install -e '.[train]')")
        return 2
    models = build(cfg)
    if a.build_only:
        return 0
    out = a.out / "bench"
    if out.exists():
        shutil.rmtree(out)
    plan = BenchPlan(
        a.providers, a.batch_sizes, a.threads, a.warmup, a.iterations, a.peak_gflops, a.per_member
    )
    cmds = bench_commands(models, plan, out)
    if not cmds:
        log("nothing to benchmark (see the skipped steps above)")
        return 1
    run_commands(cmds)
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
