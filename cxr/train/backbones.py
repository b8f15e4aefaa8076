"""The base models of the ensemble: one explicit table of timm backbones and one factory.

Takes: a backbone name (a key of ``BACKBONES`` or any timm model name), the number of classes and where
the ImageNet weights come from. Makes: a ``torch.nn.Module`` whose classifier head has ``num_classes``
outputs. Weights that were asked for but cannot be had stop with a ``TrainError`` that says how to provide
them; there is never a silent fallback to random initialisation.
"""

from __future__ import annotations

import difflib
import logging
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxr.errors import ConfigError
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """One row of the table: the timm model name, the study's input size and what to know about it."""

    timm_name: str
    input_size: int
    notes: str


BACKBONES: dict[str, Backbone] = {
    "convnext_base": Backbone(
        "convnext_base",
        224,
        "87.6M params, 30.7 GFLOP at 224 px; LayerNorm must stay FP32 under fp16 (autocast keeps it).",
    ),
    "densenet121": Backbone("densenet121", 224, "7.0M params, 5.7 GFLOP; pre-activation BatchNorm."),
    "vgg19": Backbone(
        "vgg19",
        224,
        "139.6M params, 39.3 GFLOP; no BatchNorm; its 7x7 conv 'pre_logits' (4096 wide) pools any input "
        "smaller than 224 px up to 7x7, so it costs the same at every input size.",
    ),
    "resnetv2_50": Backbone("resnetv2_50", 224, "23.5M params, 8.2 GFLOP; pre-activation ResNet."),
    "xception": Backbone(
        "legacy_xception",
        224,
        "timm 1.0.31's Xception (the original architecture) is 'legacy_xception': default 299 px, trained "
        "here at 224 px as in the study; plain static padding (no TF 'same' padding), so it exports to "
        "ONNX with a dynamic batch and works from 16 px up.",
    ),
}
"""The study's five backbones, keyed by the member name used in configs and run directories."""

HEAD_HINT = "use a timm model with a classifier head (every model from `timm.list_models()` has one)"


def resolve_timm_name(name: str) -> str:
    """A table key or a timm name -> the timm name; an unknown name gets a did-you-mean list."""
    if name in BACKBONES:
        return BACKBONES[name].timm_name
    if timm.is_model(name):
        return name
    candidates = [*BACKBONES, *timm.list_models()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for valid names"
    raise ConfigError(
        f"unknown backbone {name!r}: neither a cxr backbone ({', '.join(BACKBONES)}) nor a timm model",
        hint=hint,
    )


def default_input_size(name: str) -> int:
    """The table's input size for a key, else the timm model's own default."""
    if name in BACKBONES:
        return BACKBONES[name].input_size
    cfg = timm.get_pretrained_cfg(resolve_timm_name(name))
    size = cfg.input_size if cfg is not None else (3, 224, 224)
    return int(size[-1])


def weights_hint(timm_name: str) -> str:
    return (
        f"on a machine with internet run `python -c \"import timm; timm.create_model('{timm_name}', "
        'pretrained=True)"` and copy its cache (~/.cache/huggingface or ~/.cache/torch), or download the '
        f"weights and set `pretrained: /path/to/{timm_name}.safetensors` (a file, or a folder holding "
        f"{timm_name}.safetensors) in the member's config, or set `pretrained: false` to train from random "
        "initialisation on purpose"
    )


def _weights_file(timm_name: str, location: Path) -> tuple[str, Path]:
    """('file' | 'local-dir', path) for a weights file or a folder that holds the model's weights."""
    if location.is_file():
        return "file", location
    if not location.is_dir():
        raise TrainError(
            f"pretrained weights for {timm_name}: {location} does not exist",
            hint=weights_hint(timm_name),
            path=location,
        )
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        candidate = location / f"{timm_name}{suffix}"
        if candidate.is_file():
            return "file", candidate
    cfg = timm.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    for sub in [location / timm_name, *([location / hub_id] if hub_id else []), location]:
        if sub.is_dir() and any(next(sub.glob(f"*{ext}"), None) for ext in (".safetensors", ".bin", ".pth")):
            return "local-dir", sub
    raise TrainError(
        f"pretrained weights for {timm_name}: no {timm_name}.safetensors/.pth/.bin (nor a {timm_name}/ "
        f"folder with model.safetensors) in {location}",
        hint=weights_hint(timm_name),
        path=location,
    )


def _create(timm_name: str, num_classes: int, pretrained: bool | str | Path) -> nn.Module:
    """Random init, or ImageNet weights loaded strictly with the original head, then a new head.

    Loading with the pretrained class count makes timm load every tensor strictly (with another class
    count it drops the head and loads non-strictly, which would let a wrong file pass as random init).
    """
    if pretrained is False:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    overlay: dict[str, str] = {}
    if pretrained is not True:
        source, path = _weights_file(timm_name, Path(pretrained))
        overlay = {"file": str(path)} if source == "file" else {"source": "local-dir", "file": str(path)}
        log.info("loading %s weights from %s", timm_name, path)
    model: Any = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay or None)
    model.reset_classifier(num_classes)
    return typing.cast(nn.Module, model)


def create_backbone(
    name: str, num_classes: int, pretrained: bool | str | Path = False, *, seed: int | None = None
) -> nn.Module:
    """Build ``name`` with a fresh ``num_classes`` head.

    ``pretrained``: ``False`` random init; ``True`` ImageNet weights through timm (Hugging Face hub or
    torch hub cache); a path: a weights file, or a folder holding ``<timm_name>.safetensors``.
    ``seed`` makes the random initialisation repeatable without touching the global RNG.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    timm_name = resolve_timm_name(name)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = _create(timm_name, num_classes, pretrained)
    except TrainError:
        raise
    except Exception as e:  # timm/hub/torch raise many kinds: network, missing file, shape mismatch
        where = "timm (Hugging Face hub / torch hub)" if pretrained is True else str(pretrained)
        raise TrainError(
            f"cannot load pretrained ImageNet weights for {name} ({timm_name}) from {where}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint=weights_hint(timm_name),
        ) from e
    check_head(model, num_classes, timm_name)
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The model's classifier head (the layer replaced for our classes)."""
    get: Any = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise TrainError(f"{type(model).__name__} exposes no trainable classifier head", hint=HEAD_HINT)
    return head


def check_head(model: nn.Module, num_classes: int, timm_name: str) -> None:
    head = classifier(model)
    out = getattr(head, "out_features", getattr(head, "out_channels", None))
    if out != num_classes:
        raise TrainError(f"{timm_name}: head has {out} outputs, expected {num_classes}", hint=HEAD_HINT)


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return classifier(model).parameters()


def set_phase(model: nn.Module, phase: str) -> list[nn.Parameter]:
    """Freeze for ``adapt`` (only the head learns) or unfreeze for ``finetune``; return trainable params.

    In ``adapt`` the frozen backbone also runs in eval mode (BatchNorm statistics and dropout fixed), as
    Keras does for a frozen base model; call ``train_mode(model, phase)`` before each epoch.
    """
    if phase not in ("adapt", "finetune"):
        raise ValueError(f"unknown phase {phase!r}")
    head_ids = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(phase == "finetune" or id(p) in head_ids)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module, phase: str) -> None:
    """Put the model in training mode for ``phase`` (frozen backbone in eval mode during ``adapt``)."""
    if phase == "adapt":
        model.eval()
        classifier(model).train()
    else:
        model.train()
