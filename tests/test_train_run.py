"""Training a member end to end on tiny synthetic data: run directory, checkpoints, resume, predictions,
repeatability, bad input (corrupt images, missing class, missing manifest, out of memory), Comet offline."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from cxr.data.manifest import SplitConfig, build_manifest, load_manifest  # noqa: E402
from cxr.data.synthetic import SynthConfig, synthesize  # noqa: E402
from cxr.errors import (  # noqa: E402
    CheckpointError,
    DataError,  # noqa: E402
    TrainError,
)
from cxr.imaging.decode import decode_gray  # noqa: E402
from cxr.imaging.preprocess import to_model_input  # noqa: E402
from cxr.train import member as startup  # noqa: E402
from cxr.train import run as run_module  # noqa: E402
from cxr.train.backbones import create_backbone  # noqa: E402
from cxr.train.checkpoint import load_checkpoint, read_checkpoint_info  # noqa: E402
from cxr.train.config import TrainConfig, config_from_dict, load_config  # noqa: E402
from cxr.train.dataset import eval_transform, load_rgb  # noqa: E402
from cxr.train.distributed import DeviceSetup  # noqa: E402
from cxr.train.epoch import predict_split  # noqa: E402
from cxr.train.predictions import read_predictions  # noqa: E402
from cxr.train.run import train_member  # noqa: E402

CPU = DeviceSetup(device=torch.device("cpu"), amp_dtype=None, channels_last=False, pin_memory=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic 64 px images per class: 8 train, 1 val, 1 test each."""
    out = tmp_path_factory.mktemp("synth")
    res = synthesize(SynthConfig(out, per_class=10, seed=0, size=64))
    build_manifest(SplitConfig(res.root, out / "manifest.csv", seed=0))
    return out


def make_cfg(run_dir: Path, manifest: Path, **train: Any) -> TrainConfig:
    return config_from_dict(raw_cfg(run_dir, {"manifest": str(manifest), "max_bad_fraction": 0.2}, **train))


def raw_cfg(run_dir: Path, data: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": data,
        "train": {
            "epochs": 3,
            "adapt_epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 16,
            "adapt_lr": 1e-2,
            "finetune_lr": 1e-3,
            "device": "cpu",
            "early_stopping": {"patience": 5},
            **train,
        },
        "models": [{"name": "tiny", "backbone": "test_resnet", "input_size": 32}],
    }


@pytest.fixture(scope="module")
def trained(
    data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainConfig, run_module.TrainResult]:
    cfg = make_cfg(tmp_path_factory.mktemp("run"), data / "manifest.csv")
    before = torch.get_rng_state()
    result = train_member(cfg, "tiny")
    assert torch.equal(torch.get_rng_state(), before), "training must not move the global RNG"
    return cfg, result


def test_run_directory_follows_the_contract(trained: tuple[TrainConfig, run_module.TrainResult]) -> None:
    cfg, result = trained
    mdir = Path(cfg.run_dir) / "members" / "tiny"
    assert result.member_dir == mdir and result.epochs_run == 3 and not result.stopped_early
    for name in (
        "best.safetensors", "best.json", "last.safetensors", "last.json", "metrics.jsonl", "metrics.csv", "predictions/val.csv", "predictions/val.json",
        "predictions/test.csv", "predictions/test.json",
    ):  # fmt: skip
        assert (mdir / name).is_file(), name
    assert not (mdir / "last.state.pt").exists()  # optimiser state only outlives an interrupted run
    assert load_config(Path(cfg.run_dir) / "config.yaml") == cfg
    rows = [json.loads(line) for line in (mdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "adapt"), (1, "finetune"), (2, "finetune")]
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "loss"} <= set(rows[0]["val"])
    assert rows[0]["lr_start"] == pytest.approx(1e-2) and rows[1]["lr_start"] == pytest.approx(1e-3)
    assert all(r["lr_min"] < r["lr_start"] for r in rows)  # the cosine decays within each epoch
    with (mdir / "metrics.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {"val.macro_f1", "lr_start", "train_loss", "val.per_class.COVID.f1"} <= set(
        table[0]
    )
    best_row = max(rows, key=lambda r: r["val"]["macro_f1"])
    assert result.metrics["macro_f1"] == pytest.approx(best_row["val"]["macro_f1"])


def test_checkpoint_round_trip(trained: tuple[TrainConfig, run_module.TrainResult]) -> None:
    cfg, result = trained
    loaded = load_checkpoint(result.member_dir, "best")
    info = loaded.info
    assert (info.name, info.timm_name, info.preprocess.input_size) == ("tiny", "test_resnet", (32, 32))
    assert info.classes == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert {"accuracy", "macro_f1"} <= set(info.metrics) and info.epoch == result.best_epoch
    assert {"torch", "timm", "cxr"} <= set(info.versions) and len(info.sha256) == 64
    assert info.config["member"]["backbone"] == "test_resnet" and info.config["train"]["epochs"] == 3
    assert not loaded.model.training and next(loaded.model.parameters()).device.type == "cpu"
    # the best model reproduces the probabilities written for the stacking stage
    manifest = load_manifest(Path(cfg.data.manifest or ""))
    row = manifest.split("test")[0]
    x = eval_transform(info.preprocess)(load_rgb(manifest.abspath(row)))[None]
    with torch.no_grad():
        p = torch.softmax(loaded.model(x), dim=1)[0].double().numpy()
    table = read_predictions(result.member_dir / "predictions" / "test.csv")
    assert table.probs[table.paths.index(row.path)] == pytest.approx(p, abs=1e-6)


def test_prediction_files_cover_val_and_test(trained: tuple[TrainConfig, run_module.TrainResult]) -> None:
    cfg, result = trained
    manifest = load_manifest(Path(cfg.data.manifest or ""))
    sha = read_checkpoint_info(result.member_dir, "best").sha256
    for split in ("val", "test"):
        table = read_predictions(result.member_dir / "predictions" / f"{split}.csv")
        assert table.split == split and table.member == "tiny" and table.checkpoint_sha256 == sha
        assert table.manifest_digest == manifest.digest()
        assert sorted(table.paths) == sorted(r.path for r in manifest.split(split))
        assert dict(zip(table.paths, table.labels, strict=True)) == {
            r.path: r.label for r in manifest.split(split)
        }
        assert np.allclose(table.probs.sum(axis=1), 1.0) and (table.probs >= 0).all()


def test_predict_split_helper_matches_the_files(trained: tuple[TrainConfig, run_module.TrainResult]) -> None:
    cfg, result = trained
    best = load_checkpoint(result.member_dir)
    manifest = load_manifest(Path(cfg.data.manifest or ""))
    table = predict_split(best.model, manifest, "val", best.info.preprocess, 3, CPU, member="tiny")
    written = read_predictions(result.member_dir / "predictions" / "val.csv")
    assert table.paths == written.paths and np.allclose(table.probs, written.probs, atol=1e-12)


def test_a_manifest_kept_elsewhere_is_adopted_into_the_run_dir(
    trained: tuple[TrainConfig, run_module.TrainResult],
) -> None:
    """stack, fuse and evaluate read RUN_DIR/manifest.csv: training puts the run's manifest there."""
    cfg, _ = trained
    source = load_manifest(Path(cfg.data.manifest or ""))
    adopted = load_manifest(Path(cfg.run_dir) / "manifest.csv")
    assert adopted.digest() == source.digest() and adopted.root == source.root


def test_another_split_in_the_run_dir_is_refused_not_overwritten(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    build_manifest(SplitConfig(data / "COVID-19_Radiography_Dataset", run / "manifest.csv", seed=7))
    before = (run / "manifest.csv").read_bytes()
    with pytest.raises(DataError, match="holds another split"):
        train_member(make_cfg(run, data / "manifest.csv", epochs=1, adapt_epochs=0), "tiny")
    assert (run / "manifest.csv").read_bytes() == before


@pytest.mark.parametrize("precision", ["bf16"])
def test_reduced_precision_training_predicts_in_fp32(data: Path, tmp_path: Path, precision: str) -> None:
    """The meta-learner must be fit on what the FP32 ONNX members ship, whatever trained the member."""
    cfg = make_cfg(tmp_path / "run", data / "manifest.csv", epochs=1, adapt_epochs=0, precision=precision)
    result = train_member(cfg, "tiny")
    best = load_checkpoint(result.member_dir)
    assert best.info.config["train"]["precision"] == precision
    written = read_predictions(result.member_dir / "predictions" / "test.csv")
    manifest = load_manifest(data / "manifest.csv")
    fp32 = predict_split(best.model, manifest, "test", best.info.preprocess, 4, CPU)
    assert written.precision == "fp32" and np.allclose(written.probs, fp32.probs, atol=1e-6)


def test_tampered_or_foreign_checkpoints_are_refused(
    trained: tuple[TrainConfig, run_module.TrainResult], tmp_path: Path
) -> None:
    _, result = trained
    copy = tmp_path / "tiny"
    shutil.copytree(result.member_dir, copy)
    meta = json.loads((copy / "best.json").read_text())
    (copy / "best.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(copy)
    (copy / "best.json").write_text(json.dumps(meta))
    data = bytearray((copy / "best.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "best.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(copy)
    (copy / "best.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        load_checkpoint(copy)
    assert info.value.hint is not None and "cxr train base" in info.value.hint


def test_an_interrupted_run_resumes_exactly(
    data: Path,
    trained: tuple[TrainConfig, run_module.TrainResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, full = trained
    save_epoch = run_module._save_epoch

    def save_then_interrupt(run: Any, current: Any, epoch: int, *args: Any) -> None:
        save_epoch(run, current, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_save_epoch", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_member(make_cfg(tmp_path / "run", data / "manifest.csv"), "tiny")
    monkeypatch.setattr(run_module, "_save_epoch", save_epoch)
    assert (tmp_path / "run" / "members" / "tiny" / "last.state.pt").is_file()
    resumed = train_member(make_cfg(tmp_path / "run", data / "manifest.csv", resume=True), "tiny")
    assert resumed.epochs_run == 3
    a = load_checkpoint(full.member_dir, "last").model.state_dict()
    b = load_checkpoint(resumed.member_dir, "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed -> same weights, interrupted or not
    assert resumed.metrics["macro_f1"] == pytest.approx(full.metrics["macro_f1"])
    lines = (resumed.member_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    again = train_member(make_cfg(tmp_path / "run", data / "manifest.csv", resume=True), "tiny")
    assert again.epochs_run == 3 and again.best_epoch == resumed.best_epoch  # finished: only predicts
    assert len((resumed.member_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_finished_run_can_be_extended(data: Path, tmp_path: Path) -> None:
    first = train_member(make_cfg(tmp_path / "run", data / "manifest.csv", epochs=2), "tiny")
    assert first.epochs_run == 2
    more = train_member(make_cfg(tmp_path / "run", data / "manifest.csv", epochs=3, resume=True), "tiny")
    assert more.epochs_run == 3
    rows = (more.member_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [0, 1, 2]


@pytest.mark.parametrize("change", ["backbone", "manifest"])
def test_resume_refuses_another_architecture_or_split(
    data: Path, trained: tuple[TrainConfig, run_module.TrainResult], tmp_path: Path, change: str
) -> None:
    cfg, _ = trained
    manifest = Path(cfg.data.manifest or "")
    if change == "manifest":  # the same images minus one test image: another split
        lines = manifest.read_text().splitlines()
        test_row = next(i for i, ln in enumerate(lines) if ",test," in ln)
        (tmp_path / "m.csv").write_text("\n".join(lines[:test_row] + lines[test_row + 1 :]) + "\n")
        shutil.copy(manifest.with_suffix(".json"), tmp_path / "m.json")
        manifest = tmp_path / "m.csv"
    backbone = "test_efficientnet" if change == "backbone" else "test_resnet"
    shutil.copytree(cfg.run_dir, tmp_path / "run")
    other = config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"manifest": str(manifest)},
            "train": {"resume": True, "device": "cpu"},
            "models": [{"name": "tiny", "backbone": backbone, "input_size": 32}],
        }
    )
    if change == "manifest":  # the run's own manifest.csv refuses another split before any checkpoint is read
        with pytest.raises(DataError, match="holds another split"):
            train_member(other, "tiny")
        return
    with pytest.raises(CheckpointError, match="cannot resume tiny") as info:
        train_member(other, "tiny")
    assert info.value.hint is not None and "train.resume=false" in info.value.hint


@pytest.fixture()
def corrupt_data(data: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the data set whose first train image is garbage bytes."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    meta = json.loads((copy / "manifest.json").read_text())
    meta["root"] = str(copy / "COVID-19_Radiography_Dataset")
    (copy / "manifest.json").write_text(json.dumps(meta))
    manifest = load_manifest(copy / "manifest.csv")
    bad = manifest.split("train")[0]
    manifest.abspath(bad).write_bytes(b"not a png at all")
    return copy / "manifest.csv", bad.path


def test_a_corrupt_image_is_skipped_counted_and_logged(
    corrupt_data: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, bad = corrupt_data
    cfg = make_cfg(tmp_path / "run", manifest, epochs=1, adapt_epochs=1)
    with caplog.at_level(logging.WARNING):
        result = train_member(cfg, "tiny")
    assert result.bad_images == (bad,)
    assert any(bad in r.getMessage() for r in caplog.records)
    row = json.loads((result.member_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["bad_images"] == 1 and row["train_images"] == 31


def test_too_many_corrupt_images_stop_training(corrupt_data: tuple[Path, str], tmp_path: Path) -> None:
    manifest, bad = corrupt_data
    cfg = config_from_dict(raw_cfg(tmp_path / "run", {"manifest": str(manifest), "max_bad_fraction": 0.0}))
    with pytest.raises(TrainError) as info:
        train_member(cfg, "tiny")
    assert bad in info.value.message and info.value.hint is not None and "max_bad_fraction" in info.value.hint


def test_a_class_missing_from_train_is_a_data_error(data: Path, tmp_path: Path) -> None:
    lines = (data / "manifest.csv").read_text().splitlines()
    kept = [ln for ln in lines if ",Viral Pneumonia,train," not in ln]
    (tmp_path / "m.csv").write_text("\n".join(kept) + "\n")
    shutil.copy(data / "manifest.json", tmp_path / "m.json")
    with pytest.raises(DataError, match="no image of class\\(es\\) 'Viral Pneumonia'"):
        train_member(make_cfg(tmp_path / "run", tmp_path / "m.csv"), "tiny")


def test_missing_manifest_and_building_one_from_data_dir(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        train_member(make_cfg(tmp_path / "run", tmp_path / "nope.csv"), "tiny")
    assert info.value.hint is not None and "cxr data split" in info.value.hint
    dataset = {"data_dir": str(data / "COVID-19_Radiography_Dataset"), "split_seed": 0}
    cfg = config_from_dict(raw_cfg(tmp_path / "run", dataset, epochs=1, adapt_epochs=0))
    result = train_member(cfg, "tiny")
    built = load_manifest(tmp_path / "run" / "manifest.csv")
    assert built.digest() == load_manifest(data / "manifest.csv").digest()
    assert read_predictions(result.member_dir / "predictions" / "val.csv").manifest_digest == built.digest()


def test_out_of_memory_names_the_batch_size_to_try(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_backbone(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = create_backbone(*args, **kwargs)

        def oom(x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x

        model.forward = oom  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(startup, "create_backbone", fake_backbone)
    with pytest.raises(TrainError) as info:
        train_member(make_cfg(tmp_path / "run", data / "manifest.csv"), "tiny")
    assert "ran out of" in info.value.message and "batch of 8 images" in info.value.message
    assert info.value.hint is not None and "train.batch_size=4" in info.value.hint


def test_comet_offline_tracking(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("comet_ml")
    raw = raw_cfg(tmp_path / "run", {"manifest": str(data / "manifest.csv")}, epochs=1, adapt_epochs=1)
    raw["tracking"] = {"comet": True, "comet_offline": True, "comet_offline_dir": str(tmp_path / "comet")}
    cfg = config_from_dict(raw)
    train_member(cfg, "tiny")
    archives = list((tmp_path / "comet").glob("*.zip"))
    assert len(archives) == 1 and archives[0].stat().st_size > 0


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_eval_transform_equals_the_runtime_preprocessing(data: Path, size: tuple[int, int]) -> None:
    from cxr.spec import PreprocessSpec

    spec = PreprocessSpec(input_size=size)
    path = next((data / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.png"))
    ours = eval_transform(spec)(load_rgb(path)).numpy()
    runtime = to_model_input([decode_gray(path)], spec, normalized=True)[0]
    assert ours.shape == runtime.shape == (3, *size)
    assert np.abs(ours - runtime).max() < 1e-5


def test_loaders_shuffle_train_only_and_augment_repeatably(data: Path) -> None:
    from torchvision import transforms as T

    from cxr.spec import PreprocessSpec
    from cxr.train.dataset import epoch_generator, make_dataset, make_loader, train_transform

    spec = PreprocessSpec(input_size=(32, 32))
    first = train_transform(spec).transforms[0]
    assert isinstance(first, T.RandomRotation) and list(first.degrees) == [-10.0, 10.0]
    manifest = load_manifest(data / "manifest.csv")
    train = make_dataset(manifest, "train", spec, train=True, seed=7)
    before = torch.get_rng_state()
    epoch0 = [train[i][0] for i in range(len(train))]
    again = [train[i][0] for i in range(len(train))]
    train.set_epoch(1)
    epoch1 = [train[i][0] for i in range(len(train))]
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again, strict=True))  # type: ignore[arg-type]
    assert sum(not torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True)) > len(train) // 2  # type: ignore[arg-type]

    def batches(workers: int) -> list[torch.Tensor]:
        loader = make_loader(
            train, batch_size=8, shuffle=True, num_workers=workers, generator=epoch_generator(7, 1)
        )
        assert not loader.pin_memory
        return [b.x for b in loader if b.x is not None]

    one, two = batches(0), batches(2)
    assert len(one) == 4 and all(torch.equal(x, y) for x, y in zip(one, two, strict=True))
    val = make_dataset(manifest, "val", spec, train=False)
    order = [int(i) for b in make_loader(val, batch_size=3, shuffle=False) for i in b.index]
    assert order == list(range(len(val)))


def test_a_member_s_own_epochs_override_the_run_s(data: Path, tmp_path: Path) -> None:
    raw = raw_cfg(tmp_path / "run", {"manifest": str(data / "manifest.csv")}, epochs=1, adapt_epochs=1)
    raw["models"][0]["epochs"] = 2
    result = train_member(config_from_dict(raw), "tiny")
    rows = (result.member_dir / "metrics.jsonl").read_text().splitlines()
    assert result.epochs_run == 2 and [json.loads(x)["phase"] for x in rows] == ["adapt", "finetune"]


@pytest.mark.parametrize("patience, epochs_run", [(1, 3), (2, 4)])
def test_patience_counts_fine_tuning_epochs_only(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patience: int, epochs_run: int
) -> None:
    """Two adaptation epochs that got worse do not use up fine-tuning's patience; the best stays epoch 0."""
    real = run_module.validate
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])

    def falling(run: Any, epoch: int) -> dict[str, Any]:
        return {**real(run, epoch), "macro_f1": next(scores)}

    monkeypatch.setattr(run_module, "validate", falling)
    cfg = make_cfg(
        tmp_path, data / "manifest.csv", epochs=6, adapt_epochs=2, early_stopping={"patience": patience}
    )
    result = train_member(cfg, "tiny")
    assert result.stopped_early and result.epochs_run == epochs_run and result.best_epoch == 0
