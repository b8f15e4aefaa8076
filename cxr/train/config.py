"""Training configuration: a YAML file and ``--set key=value`` overrides -> a frozen, checked TrainConfig."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Interval
from pydantic import TypeAdapter

from cxr.errors import ConfigError
from cxr.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from cxr.train.typed_mapping import (
    NULL_MEANS_DEFAULTS,
    Bool,
    ConfigPath,
    Float,
    Int,
    Str,
    build,
    configclass,
    did_you_mean,
)

Optimizer = Literal["adamw", "sgd", "adam"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Metric = Literal["macro_f1", "accuracy", "macro_precision", "macro_recall", "loss"]
MIN_INPUT = 32  # every table backbone downsamples 32x; VGG19 and DenseNet fail below
Count = Annotated[Int, Ge(1)]  # "must be 1 or more"
NonNegative = Annotated[Int, Ge(0)]
Positive = Annotated[Float, Gt(0)]
Fraction = Annotated[Float, Interval(ge=0, lt=1)]  # "must be in [0, 1)"


@configclass("data")
class DataConfig:
    """Where the images are: a manifest from ``cxr data split``, or a data set folder to split here."""

    manifest: ConfigPath | None = None
    data_dir: ConfigPath | None = None
    split_seed: Int = 0
    num_workers: NonNegative = 0
    max_bad_fraction: Annotated[Float, Interval(ge=0, le=1)] = 0.01

    def __post_init__(self) -> None:
        if self.manifest is None and self.data_dir is None:
            raise ConfigError(
                "data: neither data.manifest nor data.data_dir is set",
                hint="set data.manifest to a manifest CSV from `cxr data split`, or data.data_dir to a data "
                "set folder (a manifest is then built in the run directory)",
            )


@configclass("train.scheduler")
class ScheduleConfig:
    """Cosine decay with warm restarts, stepped every iteration; the first cycle lasts ``t0_epochs``."""

    t0_epochs: Positive = 1.0
    t_mult: Count = 2
    min_lr_ratio: Fraction = 0.01


@configclass("train.early_stopping")
class EarlyStoppingConfig:
    """Stop fine-tuning after ``patience`` epochs without an improvement of ``metric`` by ``min_delta``."""

    metric: Metric = "macro_f1"
    patience: Count = 5
    min_delta: Annotated[Float, Ge(0)] = 0.0

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "loss" else "max"


@configclass("train")
class TrainSettings:
    """The study's two-phase schedule and how to run it."""

    epochs: Count = 25
    adapt_epochs: Int = 2  # in [0, epochs]: checked below
    batch_size: Count = 32
    eval_batch_size: Count = 64
    optimizer: Optimizer = "adamw"
    adapt_lr: Positive = 1e-3
    finetune_lr: Positive = 1e-4
    weight_decay: Annotated[Float, Ge(0)] = 1e-4
    momentum: Fraction = 0.9
    scheduler: Annotated[ScheduleConfig, NULL_MEANS_DEFAULTS] = field(default_factory=ScheduleConfig)
    class_weights: Bool = True
    # class_weight_cap None: the study's N / (K * n_k) as is; else min(w_k, cap)
    class_weight_cap: Annotated[Float, Ge(1)] | None = None
    early_stopping: Annotated[EarlyStoppingConfig, NULL_MEANS_DEFAULTS] = field(
        default_factory=EarlyStoppingConfig
    )
    device: Str = "auto"
    precision: Precision = "auto"
    channels_last: Bool = True
    resume: Bool = False
    finetune_frozen_norm: Bool = False  # pretrained members: BatchNorm stays in inference mode in fine-tuning
    sync_batchnorm: Bool = True  # under torchrun on GPUs: BatchNorm statistics over the global batch
    dist_timeout_s: Positive = 3600.0  # under torchrun: how long a process waits for the others

    def __post_init__(self) -> None:
        if not 0 <= self.adapt_epochs <= self.epochs:
            raise ConfigError(f"train.adapt_epochs must be in [0, epochs], got {self.adapt_epochs!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"train.device: {self.device!r} is not a device cxr trains on",
                hint="use auto, cpu or cuda[:N]",
            )


@configclass("tracking")
class TrackingConfig:
    """Optional Comet experiment tracking (needs ``pip install comet_ml``; offline mode needs no account)."""

    comet: Bool = False
    comet_project: Str = "cxr"
    comet_workspace: Str | None = None
    comet_offline: Bool = True
    comet_offline_dir: ConfigPath | None = None


@configclass("models.{name}")
class MemberConfig:
    """One base model (``name``: its folder); the optional fields override ``train:`` for it alone."""

    name: Str
    backbone: Str
    input_size: tuple[Int, Int]
    pretrained: Bool | ConfigPath = False
    batch_size: Count | None = None  # None: train.batch_size
    epochs: Count | None = None  # None: train.epochs
    adapt_lr: Positive | None = None
    finetune_lr: Positive | None = None
    precision: Precision | None = None  # None: train.precision
    finetune_from: Str | None = None  # None: fine-tuning trains every layer; else from this module on
    mean: tuple[Float, Float, Float] = IMAGENET_MEAN  # filled from timm's pretrained config when not given
    std: tuple[Positive, Positive, Positive] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\:") or self.name in (".", ".."):
            raise ConfigError(
                f"models: member name {self.name!r} cannot be a folder name", hint="use letters, digits, _ -"
            )
        h, w = self.input_size
        if h < MIN_INPUT or w < MIN_INPUT:
            raise ConfigError(
                f"models.{self.name}.input_size {self.input_size} is too small",
                hint=f"use at least {MIN_INPUT} px (the backbones downsample 32x)",
            )
        if self.finetune_from is not None and not self.finetune_from.strip():
            raise ConfigError(
                f"models.{self.name}.finetune_from is empty",
                hint="name a module of the backbone (e.g. block8), or leave it out to fine-tune every layer",
            )

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(input_size=self.input_size, mean=self.mean, std=self.std)


@configclass("")
class TrainConfig:
    """Everything ``cxr train base`` needs; ``models`` lists the ensemble's members in order."""

    run_dir: ConfigPath
    models: tuple[MemberConfig, ...]
    data: Annotated[DataConfig, NULL_MEANS_DEFAULTS]
    seed: Int = 0
    train: Annotated[TrainSettings, NULL_MEANS_DEFAULTS] = field(default_factory=TrainSettings)
    tracking: Annotated[TrackingConfig, NULL_MEANS_DEFAULTS] = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(
                "models: the list is empty", hint="list at least one backbone, e.g. densenet121"
            )
        names = [m.name for m in self.models]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ConfigError(
                f"models: member name(s) {', '.join(dupes)} appear twice",
                hint="give each member its own `name:`",
            )
        for m in self.models:
            if m.epochs is not None and m.epochs < self.train.adapt_epochs:
                raise ConfigError(
                    f"models.{m.name}.epochs={m.epochs} is fewer than train.adapt_epochs="
                    f"{self.train.adapt_epochs}",
                    hint="give the member at least the adaptation epochs, or lower train.adapt_epochs",
                )

    def member(self, name: str) -> MemberConfig:
        for m in self.models:
            if m.name == name:
                return m
        names = [m.name for m in self.models]
        raise ConfigError(
            f"no member {name!r} in this config (members: {', '.join(names)})",
            hint=did_you_mean(name, names) or "use one of the names under `models:`",
        )

    def batch_size(self, member: MemberConfig) -> int:
        return member.batch_size or self.train.batch_size

    def settings(self, m: MemberConfig) -> TrainSettings:
        """``train:`` with this member's own precision and epochs, where it has them."""
        own: dict[str, Any] = {"precision": m.precision, "epochs": m.epochs}
        return dataclasses.replace(self.train, **{k: v for k, v in own.items() if v is not None})

    def learning_rate(self, member: MemberConfig, phase: str) -> float:
        """The base learning rate of ``phase`` (``adapt`` or ``finetune``) for ``member``."""
        if phase == "adapt":
            return member.adapt_lr or self.train.adapt_lr
        return member.finetune_lr or self.train.finetune_lr


def load_config(path: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate, and return the frozen config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="see configs/ for examples", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}", path=path) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, found {type(raw).__name__}", path=path)
    return config_from_dict(raw, overrides, source=str(path))


def config_from_dict(
    raw: Mapping[str, Any], overrides: Sequence[str] = (), source: str = "config"
) -> TrainConfig:
    """Validate a plain mapping (as read from YAML) with overrides applied."""
    try:
        data = _normalize_models(dict(raw))
        for item in overrides:
            _apply_override(data, item)
            data = _normalize_models(data)
        return build(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e.message}", hint=e.hint) from None


def config_to_dict(cfg: object) -> Any:
    """The config (or one of its parts) as plain YAML/JSON values (paths as strings, tuples as lists)."""
    return TypeAdapter(type(cfg)).dump_python(cfg, mode="json")


def dump_config(cfg: TrainConfig, path: Path) -> Path:
    """Write the resolved config as YAML (``load_config`` reads it back to an equal config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def _normalize_models(data: dict[str, Any]) -> dict[str, Any]:
    """``models: [densenet121, {backbone: vgg19}]`` -> full member mappings with defaults filled in."""
    from cxr.train.backbones import backbone_normalization, default_input_size, resolve_timm_name

    models = data.get("models")
    if models is None:
        return data
    if not isinstance(models, list):
        raise ConfigError(f"models: expected a list of backbones, got {models!r}")
    out = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict):
            raise ConfigError(f"models.{i}: expected a backbone name or a mapping, got {m!r}")
        m = dict(m)
        if "name" not in m and "backbone" not in m:
            raise ConfigError(f"models.{i}: give at least `backbone:` (or `name:`)")
        m.setdefault("backbone", m.get("name"))
        m.setdefault("name", m["backbone"])
        if not isinstance(m["backbone"], str):
            raise ConfigError(f"models.{i}.backbone: expected a name, got {m['backbone']!r}")
        resolve_timm_name(m["backbone"])  # unknown names fail here, with a did-you-mean
        size = m.get("input_size", default_input_size(m["backbone"]))
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        m["input_size"] = size
        norm = backbone_normalization(m["backbone"])  # timm's pretrained config (resolve_data_config)
        m.setdefault("mean", list(norm[0]))
        m.setdefault("std", list(norm[1]))
        out.append(m)
    data["models"] = out
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE", hint="for example --set train.epochs=3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
    _set_path(data, key.split("."), value, key)


def _set_path(node: Any, parts: list[str], value: Any, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        targets = range(len(node)) if head == "*" else [_index(head, node, key)]
        for i in targets:
            if rest:
                _set_path(node[i], rest, value, key)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise ConfigError(f"override {key}: {head!r} is inside a value that is not a mapping")
    if not rest:
        node[head] = value
        return
    if node.get(head) is None:
        node[head] = {}
    _set_path(node[head], rest, value, key)


def _index(text: str, items: list[Any], key: str) -> int:
    names = [m.get("name") if isinstance(m, dict) else m for m in items]
    if text in names:  # models.densenet121.input_size=64 also works
        return names.index(text)
    try:
        i = int(text)
    except ValueError:
        raise ConfigError(
            f"override {key}: {text!r} is neither an index nor a member name",
            hint=f"use 0..{len(items) - 1}, * or one of {', '.join(str(n) for n in names)}",
        ) from None
    if not -len(items) <= i < len(items):
        raise ConfigError(f"override {key}: index {i} is out of range (the list has {len(items)} items)")
    return i
