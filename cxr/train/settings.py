"""Training settings: takes already-typed values, makes the frozen dataclasses a ``TrainConfig`` is made of.

Each dataclass checks its own ranges in ``__post_init__`` and names the offending key; reading them from
YAML (with ``--set`` overrides) is ``cxr.train.config``'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxr.errors import ConfigError
from cxr.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from cxr.train.typed_mapping import check, did_you_mean

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
        check("data.num_workers", self.num_workers >= 0, self.num_workers, "0 or more")
        check("data.max_bad_fraction", 0 <= self.max_bad_fraction <= 1, self.max_bad_fraction, "in [0, 1]")


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay with warm restarts, stepped every iteration; the first cycle lasts ``t0_epochs``."""

    t0_epochs: float = 1.0
    t_mult: int = 2
    min_lr_ratio: float = 0.01

    def __post_init__(self) -> None:
        check("train.scheduler.t0_epochs", self.t0_epochs > 0, self.t0_epochs, "positive")
        check("train.scheduler.t_mult", self.t_mult >= 1, self.t_mult, "1 or more")
        check("train.scheduler.min_lr_ratio", 0 <= self.min_lr_ratio < 1, self.min_lr_ratio, "in [0, 1)")


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
                hint=did_you_mean(self.metric, MONITORED_METRICS),
            )
        check("train.early_stopping.patience", self.patience >= 1, self.patience, "1 or more")
        check("train.early_stopping.min_delta", self.min_delta >= 0, self.min_delta, "0 or more")

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
        check("train.epochs", self.epochs >= 1, self.epochs, "1 or more")
        cap = self.class_weight_cap
        check("train.class_weight_cap", cap is None or cap >= 1, cap, "1 or more (or null)")
        check(
            "train.adapt_epochs", 0 <= self.adapt_epochs <= self.epochs, self.adapt_epochs, "in [0, epochs]"
        )
        check("train.batch_size", self.batch_size >= 1, self.batch_size, "1 or more")
        check("train.eval_batch_size", self.eval_batch_size >= 1, self.eval_batch_size, "1 or more")
        for key in ("adapt_lr", "finetune_lr"):
            check(f"train.{key}", getattr(self, key) > 0, getattr(self, key), "positive")
        check("train.weight_decay", self.weight_decay >= 0, self.weight_decay, "0 or more")
        check("train.momentum", 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        check("train.dist_timeout_s", self.dist_timeout_s > 0, self.dist_timeout_s, "positive")
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
    values for this member only; ``finetune_from`` (a module name such as ``block8`` or ``stages.3``)
    keeps every layer before that module frozen in fine-tuning, as in adaptation; ``mean``/``std`` default to the backbone's pretrained config (``backbone_normalization``).
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
    finetune_from: str | None = None  # None: fine-tuning trains every layer; else from this module on
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

        if self.finetune_from is not None and not self.finetune_from.strip():
            raise ConfigError(
                f"models.{self.name}.finetune_from is empty",
                hint="name a module of the backbone (e.g. block8), or leave it out to fine-tune every layer",
            )
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
