"""Training configuration: YAML mapped onto frozen, typed dataclasses, with ``--set key=value`` overrides.

Takes: a YAML file (see ``configs/*.yaml``) and overrides such as ``train.epochs=3``,
``run_dir=/tmp/run``, ``data.manifest=runs/manifest.csv``, ``models.0.input_size=32`` or
``models.*.pretrained=false``. Makes: a ``TrainConfig``. Unknown keys are refused with a did-you-mean,
values of the wrong type or out of range with the key's dotted name; nothing is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from cxr.errors import ConfigError
from cxr.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

Optimizer = Literal["adamw", "sgd", "adam"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
MONITORED_METRICS: tuple[str, ...] = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")
MIN_INPUT = 32  # every table backbone downsamples 32x; VGG19 and DenseNet fail below


@dataclass(frozen=True)
class DataConfig:
    """Where the images are: a manifest from ``cxr data split``, or a data set folder to split here."""

    manifest: Path | None = None
    data_dir: Path | None = None
    split_seed: int = 0
    num_workers: int = 0
    max_bad_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.manifest is None and self.data_dir is None:
            raise ConfigError(
                "data: neither data.manifest nor data.data_dir is set",
                hint="set data.manifest to a manifest CSV from `cxr data split`, or data.data_dir to a data "
                "set folder (a manifest is then built in the run directory)",
            )
        _check("data.num_workers", self.num_workers >= 0, self.num_workers, "0 or more")
        _check("data.max_bad_fraction", 0 <= self.max_bad_fraction <= 1, self.max_bad_fraction, "in [0, 1]")


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay with warm restarts, stepped every iteration; the first cycle lasts ``t0_epochs``."""

    t0_epochs: float = 1.0
    t_mult: int = 2
    min_lr_ratio: float = 0.01

    def __post_init__(self) -> None:
        _check("train.scheduler.t0_epochs", self.t0_epochs > 0, self.t0_epochs, "positive")
        _check("train.scheduler.t_mult", self.t_mult >= 1, self.t_mult, "1 or more")
        _check("train.scheduler.min_lr_ratio", 0 <= self.min_lr_ratio < 1, self.min_lr_ratio, "in [0, 1)")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop fine-tuning after ``patience`` epochs without an improvement of ``metric`` by ``min_delta``."""

    metric: str = "macro_f1"
    patience: int = 5
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in MONITORED_METRICS:
            raise ConfigError(
                f"train.early_stopping.metric: unknown metric {self.metric!r}",
                hint=_did_you_mean(self.metric, MONITORED_METRICS),
            )
        _check("train.early_stopping.patience", self.patience >= 1, self.patience, "1 or more")
        _check("train.early_stopping.min_delta", self.min_delta >= 0, self.min_delta, "0 or more")

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "loss" else "max"


@dataclass(frozen=True)
class TrainSettings:
    """The study's two-phase schedule and how to run it."""

    epochs: int = 25
    adapt_epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 64
    optimizer: Optimizer = "adamw"
    adapt_lr: float = 1e-3
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: ScheduleConfig = field(default_factory=ScheduleConfig)
    class_weights: bool = True
    class_weight_cap: float | None = None  # None: the study's N / (K * n_k) as is; else min(w_k, cap)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    device: str = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    resume: bool = False
    finetune_frozen_norm: bool = False  # pretrained members: BatchNorm stays in inference mode in fine-tuning
    sync_batchnorm: bool = True  # under torchrun on GPUs: BatchNorm statistics over the global batch
    dist_timeout_s: float = 3600.0  # under torchrun: how long a process waits for the others

    def __post_init__(self) -> None:
        _check("train.epochs", self.epochs >= 1, self.epochs, "1 or more")
        cap = self.class_weight_cap
        _check("train.class_weight_cap", cap is None or cap >= 1, cap, "1 or more (or null)")
        _check(
            "train.adapt_epochs", 0 <= self.adapt_epochs <= self.epochs, self.adapt_epochs, "in [0, epochs]"
        )
        _check("train.batch_size", self.batch_size >= 1, self.batch_size, "1 or more")
        _check("train.eval_batch_size", self.eval_batch_size >= 1, self.eval_batch_size, "1 or more")
        for key in ("adapt_lr", "finetune_lr"):
            _check(f"train.{key}", getattr(self, key) > 0, getattr(self, key), "positive")
        _check("train.weight_decay", self.weight_decay >= 0, self.weight_decay, "0 or more")
        _check("train.momentum", 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        _check("train.dist_timeout_s", self.dist_timeout_s > 0, self.dist_timeout_s, "positive")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"train.device: {self.device!r} is not a device cxr trains on",
                hint="use auto, cpu or cuda[:N]",
            )


@dataclass(frozen=True)
class TrackingConfig:
    """Optional Comet experiment tracking (needs ``pip install comet_ml``; offline mode needs no account)."""

    comet: bool = False
    comet_project: str = "cxr"
    comet_workspace: str | None = None
    comet_offline: bool = True
    comet_offline_dir: Path | None = None


@dataclass(frozen=True)
class MemberConfig:
    """One base model: its member ``name`` (the run directory's folder), backbone and input size (h, w).

    ``batch_size``, ``epochs``, ``adapt_lr``, ``finetune_lr`` and ``precision`` override the ``train:``
    values for this member only; ``mean``/``std`` default to the backbone's pretrained config (``backbone_normalization``).
    """

    name: str
    backbone: str
    input_size: tuple[int, int]
    pretrained: bool | Path = False
    batch_size: int | None = None
    epochs: int | None = None  # None: train.epochs
    adapt_lr: float | None = None
    finetune_lr: float | None = None
    precision: Precision | None = None  # None: train.precision
    mean: tuple[float, float, float] = IMAGENET_MEAN  # filled from timm's pretrained config when not given
    std: tuple[float, float, float] = IMAGENET_STD

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
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"models.{self.name}.batch_size must be 1 or more, got {self.batch_size}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"models.{self.name}.epochs must be 1 or more, got {self.epochs}")
        for key in ("adapt_lr", "finetune_lr"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"models.{self.name}.{key} must be positive, got {value}")

        if any(v <= 0 for v in self.std):
            raise ConfigError(f"models.{self.name}.std {self.std} must be positive")

    @property
    def spec(self) -> PreprocessSpec:
        """The member's preprocessing: resize to ``input_size``, normalise with the backbone's mean/std."""
        return PreprocessSpec(input_size=self.input_size, mean=self.mean, std=self.std)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``cxr train base`` needs; ``models`` lists the ensemble's members in order."""

    run_dir: Path
    models: tuple[MemberConfig, ...]
    data: DataConfig
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(
                "models: the list is empty", hint="list at least one backbone, e.g. densenet121"
            )
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
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
            hint=_did_you_mean(name, names) or "use one of the names under `models:`",
        )

    def batch_size(self, member: MemberConfig) -> int:
        return member.batch_size or self.train.batch_size

    def settings(self, m: MemberConfig) -> TrainSettings:
        """``train:`` with this member's own precision and epochs, where it has them."""
        own = {"precision": m.precision, "epochs": m.epochs}
        return dataclasses.replace(self.train, **{k: v for k, v in own.items() if v is not None})

    def learning_rate(self, member: MemberConfig, phase: str) -> float:
        """The base learning rate of ``phase`` (``adapt`` or ``finetune``) for ``member``."""
        if phase == "adapt":
            return member.adapt_lr or self.train.adapt_lr
        return member.finetune_lr or self.train.finetune_lr


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


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
        return typing.cast(TrainConfig, _build(TrainConfig, data, ""))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e.message}", hint=e.hint) from None


def config_to_dict(cfg: Any) -> Any:
    """The config as plain YAML/JSON values (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, tuple | list):
        return [config_to_dict(v) for v in cfg]
    return cfg


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
    child = node.setdefault(head, {})
    if child is None:
        child = node[head] = {}
    _set_path(child, rest, value, key)


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


# ---------------------------------------------------------------------------------------------------------
# Typed mapping
# ---------------------------------------------------------------------------------------------------------


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"unknown key {name!r}",
                hint=_did_you_mean(str(key), list(fields)) or f"valid keys: {', '.join(fields)}",
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {dotted!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value if value is not None else {}, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not {_describe(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value).expanduser()
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # a programming error, named anyway


def _describe(tp: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    parts = [names.get(a, getattr(a, "__name__", str(a))) for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp):
        parts.append("null")
    return " or ".join(parts)


def _did_you_mean(name: str, options: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else None


def _check(key: str, ok: bool, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
