"""Training config on pydantic: dotted keys with member names, YAML types kept, ConfigError when built."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

pytest.importorskip("timm")

from cxr.errors import ConfigError  # noqa: E402
from cxr.train.config import (  # noqa: E402
    MemberConfig,
    ScheduleConfig,
    TrainSettings,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)


def raw(**extra: object) -> dict[str, object]:
    return {"run_dir": "r", "data": {"manifest": "m.csv"}, "models": ["vgg19", "xception"], **extra}


def member(**fields: object) -> dict[str, object]:
    return raw(models=["vgg19", {"backbone": "xception", **fields}])


@pytest.mark.parametrize(
    "config, overrides, message, hint",
    [
        (member(finetune_lr=-1), [], "models.xception.finetune_lr must be positive, got -1", "or null"),
        (member(epochs="x"), [], "models.xception.epochs: 'x' is not an integer or null", None),
        (member(pretrained=1), [], "models.xception.pretrained: 1 is not true/false or a path", None),
        (member(pretrained=""), [], "models.xception.pretrained: '' is not true/false or a path", None),
        (member(mean=[1, 2]), [], "models.xception.mean: expected 3 values, got 2 ([1, 2])", None),
        (member(input_size=[32, 32, 3]), [], "models.xception.input_size: expected 2 values, got 3", None),
        (
            member(input_size=[32, "a"]),
            [],
            "models.xception.input_size.1: expected an integer, got 'a'",
            None,
        ),
        (member(colour=1), [], "unknown key 'models.xception.colour'", "valid keys: name, backbone"),
        (member(precision="fp8"), [], "models.xception.precision: 'fp8' is not one of auto", "fp32"),
        (member(finetune_from=" "), [], "models.xception.finetune_from is empty", "block8"),
        (member(finetune_from=3), [], "models.xception.finetune_from: 3 is not a string or null", None),
        (raw(), ["models.*.batch_size=0"], "models.vgg19.batch_size must be 1 or more, got 0", None),
        (raw(), ["models.1.adapt_lr=0"], "models.xception.adapt_lr must be positive, got 0", None),
        (
            raw(train={"optimizer": "adamx"}),
            [],
            "'adamx' is not one of adamw, sgd, adam",
            "did you mean adam",
        ),
        (raw(train={"epochs": "3"}), [], "train.epochs: expected an integer, got '3'", None),
        (raw(train={"epochs": 2.0}), [], "train.epochs: expected an integer, got 2.0", None),
        (raw(train={"adapt_lr": True}), [], "train.adapt_lr: expected a number, got True", None),
        (raw(train={"momentum": 1}), [], "train.momentum must be in [0, 1), got 1", None),
        (raw(train={"class_weight_cap": 0.5}), [], "train.class_weight_cap must be 1 or more", "or null"),
        (raw(train={"scheduler": 5}), [], "train.scheduler: expected a mapping, got 5", None),
        (raw(train={"scheduler": {"t_mult": 0}}), [], "train.scheduler.t_mult must be 1 or more", None),
        (
            raw(data={"manifest": "m", "max_bad_fraction": 2}),
            [],
            "data.max_bad_fraction must be in [0, 1]",
            None,
        ),
        (raw(data={"manifest": ""}), [], "data.manifest: '' is not a path or null", None),
        (raw(tracking={"comet": "yes"}), [], "tracking.comet: expected true or false, got 'yes'", None),
        (raw(seed=1.5), [], "seed: expected an integer, got 1.5", None),
    ],
)
def test_errors_name_the_dotted_key(
    config: dict[str, object], overrides: list[str], message: str, hint: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, overrides)
    assert message in info.value.message
    if hint is not None:
        assert info.value.hint is not None and hint in info.value.hint


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrainSettings(epochs=0), "train.epochs must be 1 or more, got 0"),
        (lambda: TrainSettings(epochs=2, adapt_epochs=3), "train.adapt_epochs must be in [0, epochs]"),
        (lambda: TrainSettings(bogus=1), "unknown key 'train.bogus'"),  # type: ignore[call-arg]
        (lambda: TrainSettings(scheduler={"t0_epochs": 0}), "scheduler.t0_epochs"),  # type: ignore[arg-type]
        (lambda: ScheduleConfig(min_lr_ratio=1.0), "train.scheduler.min_lr_ratio must be in [0, 1)"),
        (lambda: MemberConfig("a", "vgg19", (32, 32), epochs=0), "models.?.epochs must be 1 or more"),
        (lambda: MemberConfig(name="a", backbone="vgg19", input_size=(32, 32), epochs=0), "models.a.epochs"),
        (lambda: MemberConfig(name="a", backbone="vgg19", input_size=(16, 32)), "models.a.input_size"),
    ],
)
def test_constructing_directly_is_checked_too(make: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert message in info.value.message


def test_replace_is_checked_and_configs_are_frozen() -> None:
    cfg = config_from_dict(raw())
    assert dataclasses.replace(cfg.train, epochs=9).epochs == 9
    with pytest.raises(ConfigError, match="train.momentum must be in"):
        dataclasses.replace(cfg.train, momentum=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]
    assert isinstance(cfg.models, tuple) and isinstance(cfg.models[0].input_size, tuple)
    assert isinstance(cfg.run_dir, Path) and isinstance(cfg.train.adapt_lr, float)


@pytest.mark.parametrize("section", ["train", "tracking"])
def test_a_section_left_empty_takes_the_defaults(section: str) -> None:
    cfg = config_from_dict(raw(**{section: None}))
    assert cfg.train == TrainSettings() and not cfg.tracking.comet


@pytest.mark.parametrize(
    "override, check",
    [
        ("models.xception.finetune_from=block8", lambda c: c.member("xception").finetune_from == "block8"),
        ("models.*.finetune_from=stages.3", lambda c: {m.finetune_from for m in c.models} == {"stages.3"}),
        (
            "models.0.pretrained=~/w.safetensors",
            lambda c: c.models[0].pretrained == Path.home() / "w.safetensors",
        ),
        ("run_dir=~/r", lambda c: c.run_dir == Path.home() / "r"),
        ("train.dist_timeout_s=.inf", lambda c: math.isinf(c.train.dist_timeout_s)),
        ("train.class_weight_cap=", lambda c: c.train.class_weight_cap is None),
        ("models.vgg19.mean=[0, 0.5, 1]", lambda c: c.member("vgg19").mean == (0.0, 0.5, 1.0)),
    ],
)
def test_overrides_are_typed_and_round_trip(tmp_path: Path, override: str, check: object) -> None:
    cfg = config_from_dict(raw(), [override])
    assert check(cfg)  # type: ignore[operator]
    assert load_config(dump_config(cfg, tmp_path / "config.yaml")) == cfg


def test_config_to_dict_gives_plain_values() -> None:
    cfg = config_from_dict(raw(), ["models.vgg19.pretrained=/w"])
    plain = config_to_dict(cfg.member("vgg19"))
    assert (
        plain["pretrained"] == "/w" and plain["input_size"] == [224, 224] and plain["finetune_from"] is None
    )
    assert config_to_dict(cfg)["train"]["scheduler"] == {"t0_epochs": 1.0, "t_mult": 2, "min_lr_ratio": 0.01}
