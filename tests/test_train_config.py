"""Training config: YAML -> frozen dataclasses, overrides, validation with did-you-mean, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("timm")

from cxr.errors import ConfigError  # noqa: E402
from cxr.train.config import config_from_dict, dump_config, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("ci", "demo", "paper")
FIVE = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "xception")


def minimal(**extra: object) -> dict[str, object]:
    return {"run_dir": "runs/x", "data": {"manifest": "m.csv"}, "models": ["densenet121"], **extra}


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load_with_the_five_backbones(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert tuple(m.name for m in cfg.models) == FIVE
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert cfg.train.adapt_epochs >= 1 and cfg.train.epochs > cfg.train.adapt_epochs
    if name == "paper":
        assert all(m.input_size == (224, 224) and m.pretrained is True for m in cfg.models)
        assert (cfg.train.epochs, cfg.train.adapt_epochs) == (25, 2)
        assert cfg.train.class_weights and cfg.train.early_stopping.metric == "macro_f1"
    else:
        assert all(m.pretrained is False for m in cfg.models)


def test_defaults_fill_in_a_member_given_by_name() -> None:
    cfg = config_from_dict(minimal(models=["xception", {"backbone": "test_resnet", "input_size": [48, 64]}]))
    xc, tr = cfg.models
    assert (xc.name, xc.backbone, xc.input_size, xc.pretrained) == ("xception", "xception", (224, 224), False)
    assert (tr.name, tr.input_size, tr.spec.input_size) == ("test_resnet", (48, 64), (48, 64))
    assert cfg.train.optimizer == "adamw" and cfg.train.epochs == 25 and cfg.train.adapt_epochs == 2


@pytest.mark.parametrize(
    "override, check",
    [
        ("train.epochs=3", lambda c: c.train.epochs == 3),
        ("run_dir=/tmp/elsewhere", lambda c: c.run_dir == Path("/tmp/elsewhere")),
        ("data.manifest=/data/m.csv", lambda c: c.data.manifest == Path("/data/m.csv")),
        ("models.*.input_size=48", lambda c: all(m.input_size == (48, 48) for m in c.models)),
        ("models.0.pretrained=true", lambda c: c.models[0].pretrained is True),
        (
            "models.vgg19.pretrained=/w/vgg19.safetensors",
            lambda c: c.member("vgg19").pretrained == Path("/w/vgg19.safetensors"),
        ),
        ("models=[densenet121]", lambda c: [m.name for m in c.models] == ["densenet121"]),
        ("train.early_stopping.metric=loss", lambda c: c.train.early_stopping.mode == "min"),
        ("tracking.comet=true", lambda c: c.tracking.comet is True),
    ],
)
def test_overrides(override: str, check: object) -> None:
    cfg = load_config(ROOT / "configs" / "ci.yaml", [override])
    assert check(cfg)  # type: ignore[operator]


@pytest.mark.parametrize(
    "raw, overrides, message, hint",
    [
        (minimal(trian={"epochs": 3}), [], "unknown key 'trian'", "did you mean train"),
        (minimal(train={"epochz": 3}), [], "unknown key 'train.epochz'", "did you mean epochs"),
        (minimal(train={"epochs": "many"}), [], "train.epochs: expected an integer", None),
        (minimal(train={"class_weights": "yes"}), [], "expected true or false", None),
        (minimal(train={"optimizer": "lion"}), [], "'lion' is not one of adamw, sgd, adam", None),
        (
            minimal(train={"epochs": 2, "adapt_epochs": 3}),
            [],
            "train.adapt_epochs must be in [0, epochs]",
            None,
        ),
        (
            minimal(train={"early_stopping": {"metric": "macro_f"}}),
            [],
            "train.early_stopping.metric: 'macro_f' is not one of macro_f1, accuracy",
            "did you mean macro_f1",
        ),
        (minimal(train={"dist_timeout_s": 0}), [], "train.dist_timeout_s must be positive", None),
        (minimal(models=["densnet121"]), [], "unknown backbone 'densnet121'", "did you mean densenet121"),
        (minimal(models=[{"backbone": "vgg19", "input_size": 16}]), [], "too small", "at least 32"),
        (minimal(models=["vgg19", "vgg19"]), [], "appear twice", "name"),
        (minimal(models=[{"backbone": "vgg19", "epochs": 0}]), [], "models.vgg19.epochs must be 1", None),
        (
            minimal(models=[{"backbone": "vgg19", "epochs": 1}]),
            [],
            "models.vgg19.epochs=1 is fewer than train.adapt_epochs=2",
            "adaptation epochs",
        ),
        (minimal(models=[]), [], "the list is empty", None),
        (
            {"run_dir": "r", "models": ["vgg19"], "data": {}},
            [],
            "neither data.manifest nor data.data_dir",
            None,
        ),
        ({"data": {"manifest": "m"}, "models": ["vgg19"]}, [], "missing key 'run_dir'", None),
        (minimal(), ["train.epochs"], "is not KEY=VALUE", "--set train.epochs=3"),
        (minimal(), ["models.7.input_size=32"], "index 7 is out of range", None),
        (minimal(), ["train.device=tpu"], "train.device", "auto, cpu or cuda"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(
    raw: dict[str, object], overrides: list[str], message: str, hint: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, overrides)
    assert message in info.value.message
    if hint is not None:
        assert info.value.hint is not None and hint in info.value.hint


def test_missing_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_member_lookup_suggests_a_name() -> None:
    cfg = load_config(ROOT / "configs" / "ci.yaml")
    with pytest.raises(ConfigError) as info:
        cfg.member("resnet50")
    assert info.value.hint is not None and "resnetv2_50" in info.value.hint


@pytest.mark.parametrize("name", CONFIGS)
def test_resolved_config_round_trips(tmp_path: Path, name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["train.epochs=7", "models.1.pretrained=/w"])
    again = load_config(dump_config(cfg, tmp_path / "config.yaml"))
    assert again == cfg


def test_member_normalisation_is_resolved_from_timm_and_overridable() -> None:
    """legacy_xception's weights expect mean = std = 0.5; a member's config may say otherwise."""
    raw = {
        "run_dir": "r",
        "data": {"manifest": "m.csv"},
        "models": [
            "xception",
            {"name": "d", "backbone": "densenet121", "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]},
        ],
    }
    cfg = config_from_dict(raw)
    assert cfg.member("xception").spec.mean == (0.5, 0.5, 0.5) and cfg.member("xception").spec.std == (
        0.5,
        0.5,
        0.5,
    )
    assert cfg.member("d").spec.mean == (0.5, 0.5, 0.5) and cfg.member("d").spec.std == (1.0, 1.0, 1.0)
    raw["models"] = [{"backbone": "densenet121", "std": [0, 1, 1]}]
    with pytest.raises(ConfigError, match=r"models.densenet121.std.0 must be positive, got 0"):
        config_from_dict(raw)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_the_cpu_uses_bf16_only_in_hardware(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    import torch

    from cxr.train import distributed as device

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cfg = config_from_dict({"run_dir": "r", "data": {"manifest": "m.csv"}, "models": ["densenet121"]})
    settings = dataclasses.replace(cfg.train, device="cpu", precision="auto")
    assert device.resolve_device(settings).precision == expected


@pytest.mark.parametrize(("member_precision", "expected"), [(None, "bf16"), ("fp32", "fp32")])
def test_a_member_may_train_in_its_own_precision(member_precision: str | None, expected: str) -> None:
    model: dict = (
        {"backbone": "vgg19"}
        if member_precision is None
        else {"backbone": "vgg19", "precision": member_precision}
    )
    cfg = config_from_dict(
        {"run_dir": "r", "data": {"manifest": "m.csv"}, "train": {"precision": "bf16"}, "models": [model]}
    )
    assert cfg.settings(cfg.member("vgg19")).precision == expected and cfg.train.precision == "bf16"


@pytest.mark.parametrize(("member_epochs", "expected"), [(None, 6), (9, 9)])
def test_a_member_may_train_for_its_own_number_of_epochs(member_epochs: int | None, expected: int) -> None:
    model: dict = {"backbone": "xception"} if member_epochs is None else {"backbone": "xception", "epochs": 9}
    cfg = config_from_dict(
        {"run_dir": "r", "data": {"manifest": "m.csv"}, "train": {"epochs": 6}, "models": [model]}
    )
    assert cfg.settings(cfg.member("xception")).epochs == expected and cfg.train.epochs == 6
