"""The README's paper commands, typed as a user would, on a subset of the real sample with real weights.

Takes the stage-by-stage block of README.md literally (only DATA_DIR is replaced, and `cxr train base` gets
``--set`` overrides for size, epochs and device/precision), runs it on 20 real radiographs per class from
``../shared/data/radiography-dev`` with the real Xception ImageNet weights and bf16 autocast training, and
checks that every stage succeeds, that the fused graph equals the separate pipeline and PyTorch, that the
predictions behind stacking are FP32 and that Xception carries its own normalisation (mean = std = 0.5).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "legacy_xception-imagenet-keras.safetensors"
SAMPLE = SHARED / "data" / "radiography-dev"
PER_CLASS = 20  # 80/10/10 of 20: 2 validation images per class, the fewest the meta-learner can be fit on
TRAIN_OVERRIDES = (
    "train.device=cpu",
    "train.precision=bf16",
    # bf16 without AVX512-BF16/AMX is emulated by oneDNN: VGG19's 4096-wide 7x7 head then takes minutes a
    # step and ConvNeXt-base's MLPs ~10x FP32, so those two train in FP32 here (precision is per member;
    # auto picks fp32 on such CPUs); Xception, DenseNet and ResNetV2 take the bf16 path.
    "models.vgg19.precision=fp32",
    "models.convnext_base.precision=fp32",
    "train.epochs=2",
    "train.adapt_epochs=1",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "data.num_workers=0",
    "models.*.input_size=32",
    "models.*.pretrained=false",
    "models.xception.input_size=48",  # another size than the rest: the in-graph resize is exercised too
    f"models.xception.pretrained={WEIGHTS}",
)

# NNCF's full bias correction on 300 images and accuracy control at a 0.005 mean probability change are the
# paper path's defaults; here the fast one on 16 images and a bar every member meets keep the export of five
# barely trained members to seconds (settings and verdict: tests/test_export_quantize.py, test_fuse_int8.py)
EXPORT_OVERRIDES = ("--fast-bias-correction", "--max-calib", "16", "--int8-max-change", "0.5")

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def readme_paper_commands(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The `cxr ...` lines of the README's "Stage by stage" block, comments removed."""
    text = readme.read_text(encoding="utf-8")
    start = text.index("Stage by stage")
    block = text[
        text.index("```bash", start) + len("```bash") : text.index("```", text.index("```bash", start) + 7)
    ]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("cxr ")]


def _subset(dest: Path) -> Path:
    """The first PER_CLASS images of each class folder (Kaggle v4 layout), copied."""
    for class_dir in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        images = sorted((class_dir / "images").glob("*.png"))[:PER_CLASS]
        (dest / class_dir.name / "images").mkdir(parents=True)
        for img in images:
            shutil.copy(img, dest / class_dir.name / "images" / img.name)
    return dest


def test_readme_block_is_the_paper_path() -> None:
    stages = [" ".join(c[:3]) for c in readme_paper_commands()]
    assert stages == [
        "cxr data split",
        "cxr data stats",
        "cxr train base",
        "cxr export runs/paper",
        "cxr stack runs/paper",
        "cxr fuse runs/paper",
        "cxr evaluate runs/paper",
    ]


def test_readme_paper_commands_run_on_real_images(tmp_path: Path) -> None:
    if not SAMPLE.is_dir() or not WEIGHTS.is_file():
        pytest.skip(f"the real sample ({SAMPLE}) or the Xception weights ({WEIGHTS}) are not here")
    data = _subset(tmp_path / "data")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "paper.yaml", tmp_path / "configs" / "paper.yaml")
    for words in readme_paper_commands():
        args = [str(data) if w == "DATA_DIR" else w for w in words[1:]]
        if words[1:3] == ["train", "base"]:
            args += [item for o in TRAIN_OVERRIDES for item in ("--set", o)]
        if words[1] == "export":
            args += EXPORT_OVERRIDES
        done = subprocess.run(
            [sys.executable, "-m", "cxr", *args], cwd=tmp_path, capture_output=True, text=True, timeout=1500
        )
        assert done.returncode == 0, (
            f"`{' '.join(words)}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    run = tmp_path / "runs" / "paper"
    report = json.loads((run / "fuse_report.json").read_text())
    fp32 = report["files"]["fp32"]["parity_vs_separate"]
    assert max(fp32["max_abs_diff_probabilities"], fp32["max_abs_diff_member_probabilities"]) <= 1e-5
    assert report["end_to_end"]["top1_identical"] and report["end_to_end"]["n"] > 0
    xception = json.loads((run / "members" / "xception" / "best.json").read_text())
    assert xception["preprocess"]["mean"] == [0.5, 0.5, 0.5] and xception["preprocess"]["std"] == [
        0.5,
        0.5,
        0.5,
    ]
    assert xception["config"]["train"]["precision"] == "bf16"
    assert xception["extra"]["pretrained"]["sha256"] == (
        "fb96bb750ade0feee1aa3f5e615d443475f9b98d211dc9292b74c877c758ce42"
    )
    for member in ("xception", "densenet121"):
        meta = json.loads((run / "members" / member / "predictions" / "test.json").read_text())
        assert meta["precision"] == "fp32"
    assert (run / "eval" / "report.md").is_file() and (run / "ensemble.onnx").is_file()
    heat = report["heatmaps"]
    assert heat is not None and heat["max_abs_logit_identity"] < 1e-3 and "vgg19" in heat["excluded"]
    assert report["ood"] is None or report["ood"]["threshold"] > 0
