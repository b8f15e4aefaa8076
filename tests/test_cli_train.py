"""`cxr train base`: the CI config end to end on tiny synthetic data, and clear errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from typer.testing import CliRunner  # noqa: E402

from cxr.cli.train import app  # noqa: E402
from cxr.data.manifest import SplitConfig, build_manifest  # noqa: E402
from cxr.data.synthetic import SynthConfig, synthesize  # noqa: E402
from cxr.train.checkpoint import read_checkpoint_info  # noqa: E402
from cxr.train.predictions import align_members, read_predictions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "ci.yaml"
FIVE = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "xception")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    res = synthesize(SynthConfig(out, per_class=10, seed=1, size=64))
    return build_manifest(SplitConfig(res.root, out / "manifest.csv", seed=0)).csv_path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["base", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.slow
def test_train_all_with_the_ci_config(manifest: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, out = invoke(
        "--config",
        str(CI),
        "--all",
        "--quiet",
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"data.manifest={manifest}",
    )
    assert code == 0, out
    assert "macro-F1" in out and "Decision support only" in out
    tables = []
    for name in FIVE:
        info = read_checkpoint_info(run_dir / "members" / name)
        assert info.name == name and info.preprocess.input_size == (32, 32)
        tables.append(read_predictions(run_dir / "members" / name / "predictions" / "test.csv"))
    paths, labels, probs = align_members(tables)  # what the stacking stage does next
    assert probs.shape == (len(paths), 5, 4) and len(labels) == len(paths) == 4
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "pass either --members NAME[,NAME...] or --all"),
        (["--all", "--members", "vgg19"], "pass either --members"),
        (["--members", "vgg19,vgg91"], "did you mean vgg19"),
        (["--members", ","], "names no member"),
        (["-m", "vgg19"], "No such option: -m"),  # one spelling: --members
        (["--all", "--set", "train.epochs=many"], "train.epochs: expected an integer"),
        (
            ["--all", "--set", "data.manifest=/nonexistent/m.csv"],
            "manifest /nonexistent/m.csv does not exist",
        ),
        (["--all", "--set", "models.0.backbone=convnext_bse"], "did you mean convnext_base"),
    ],
)
def test_bad_input_gives_a_message_and_exit_code_2(
    args: list[str], message: str, manifest: Path, tmp_path: Path
) -> None:
    base = ["--config", str(CI), "--set", f"run_dir={tmp_path}", "--set", f"data.manifest={manifest}"]
    code, out = invoke(*base, *args)
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_probe_prints_what_the_library_describes(manifest: Path, tmp_path: Path) -> None:
    import shutil

    import timm
    from safetensors.torch import save_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(manifest, run_dir / "manifest.csv")
    shutil.copy(manifest.with_suffix(".json"), run_dir / "manifest.json")
    weights = tmp_path / "test_resnet.safetensors"
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    args = [
        "probe",
        str(run_dir),
        "--backbone",
        "test_resnet",
        "--pretrained",
        str(weights),
        "--input-size",
        "32",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("linear probe (test_resnet, frozen, 32 px, C=") and "test accuracy" in first
    assert f"wrote {run_dir / 'baselines' / 'linear_probe'} (" in result.output
