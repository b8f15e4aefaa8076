"""Training settings: takes plain values, makes the frozen, checked dataclasses a ``TrainConfig`` is made of.

Types and ranges are declared on the fields (pydantic checks them, ``cxr.train.typed_mapping`` names the
dotted key); ``__post_init__`` keeps the checks between fields and those with a hint. Reading them from
YAML (with ``--set`` overrides) is ``cxr.train.config``'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from cxr.errors import ConfigError
from cxr.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from cxr.train.typed_mapping import (
    NULL_MEANS_DEFAULTS,
    Bool,
    ConfigPath,
    Float,
    Int,
    Str,
    check,
    configclass,
    did_you_mean,
)

Optimizer = Literal["adamw", "sgd", "adam"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
MONITORED_METRICS: tuple[str, ...] = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")
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

    metric: Str = "macro_f1"
    patience: Count = 5
    min_delta: Annotated[Float, Ge(0)] = 0.0

    def __post_init__(self) -> None:
        if self.metric not in MONITORED_METRICS:
            raise ConfigError(
                f"train.early_stopping.metric: unknown metric {self.metric!r}",
                hint=did_you_mean(self.metric, MONITORED_METRICS),
            )

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
        check(
            "train.adapt_epochs", 0 <= self.adapt_epochs <= self.epochs, self.adapt_epochs, "in [0, epochs]"
        )
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
    """One base model: its member ``name`` (the run directory's folder), backbone and input size (h, w).

    ``batch_size``, ``epochs``, ``adapt_lr``, ``finetune_lr`` and ``precision`` override the ``train:``
    values for this member only; ``finetune_from`` (a module name such as ``block8`` or ``stages.3``)
    keeps every layer before that module frozen in fine-tuning, as in adaptation; ``mean``/``std`` default
    to the backbone's pretrained config (``backbone_normalization``).
    """

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
    std: tuple[Float, Float, Float] = IMAGENET_STD

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
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"models.{self.name}.std {self.std} must be positive")

    @property
    def spec(self) -> PreprocessSpec:
        """The member's preprocessing: resize to ``input_size``, normalise with the backbone's mean/std."""
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
