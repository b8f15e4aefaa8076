"""The base models: one table of timm backbones and one factory; wanted weights never fall back to random."""

from __future__ import annotations

import difflib
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxr.errors import ConfigError, TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    timm_name: str
    input_size: int  # the study's


BACKBONES: dict[str, Backbone] = {  # the study's five, keyed by the member name in configs and run dirs
    "convnext_base": Backbone("convnext_base", 224),
    "densenet121": Backbone("densenet121", 224),
    "vgg19": Backbone("vgg19", 224),
    "resnetv2_50": Backbone("resnetv2_50", 224),
    # timm's original Xception: static padding (a dynamic batch in ONNX); 224 px as in the study
    "xception": Backbone("legacy_xception", 224),
}

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


def backbone_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's ImageNet weights expect (timm's ``resolve_data_config``)."""
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(resolve_timm_name(name))
    resolved = resolve_data_config(
        pretrained_cfg=cfg.to_dict() if cfg is not None else {}, use_test_size=True
    )
    return tuple(float(v) for v in resolved["mean"]), tuple(float(v) for v in resolved["std"])


def weights_hint(timm_name: str) -> str:
    return (
        f"on a machine with internet run `python -c \"import timm; timm.create_model('{timm_name}', "
        'pretrained=True)"` and copy its cache (~/.cache/huggingface or ~/.cache/torch), or download the '
        f"weights and set `pretrained: /path/to/{timm_name}.safetensors` (a file, or a folder holding "
        f"{timm_name}.safetensors) in the member's config, or set `pretrained: false` to train from random "
        "initialisation on purpose"
    )


def weights_file(timm_name: str, location: Path) -> tuple[str, Path]:
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
    """Random init, or ImageNet weights loaded so that nothing but the classifier head may be missing."""
    if pretrained is False:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    if pretrained is not True:
        source, path = weights_file(timm_name, Path(pretrained))
        log.info("loading %s weights from %s", timm_name, path)
        if source == "file":
            return _from_file(timm_name, num_classes, path)
        overlay = {"source": "local-dir", "file": str(path)}
        model: Any = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay)
    else:
        model = timm.create_model(timm_name, pretrained=True)
    model.reset_classifier(num_classes)
    return typing.cast(nn.Module, model)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TrainError(f"{path} holds no state dict", hint="save the weights as a state dict", path=path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _from_file(timm_name: str, num_classes: int, path: Path) -> nn.Module:
    model: Any = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    head = {f"{model.default_cfg.get('classifier', 'fc')}.{p}" for p in ("weight", "bias")}
    state = {k: v for k, v in _read_state(path).items() if k not in head}  # the file's head (1000 classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise TrainError(
            f"{path} does not fit timm's {timm_name}: {len(missing)} tensor(s) missing (first: "
            f"{', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected (first: {', '.join(unexpected[:3]) or '-'})",
            hint=weights_hint(timm_name),
            path=path,
        )
    return typing.cast(nn.Module, model)


def create_backbone(
    name: str, num_classes: int, pretrained: bool | str | Path = False, *, seed: int | None = None
) -> nn.Module:
    """Build ``name`` with a fresh ``num_classes`` head; ``pretrained``: False, True (timm) or a path.

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
    head = classifier(model)
    out = getattr(head, "out_features", getattr(head, "out_channels", None))
    if out != num_classes:
        raise TrainError(f"{timm_name}: head has {out} outputs, expected {num_classes}", hint=HEAD_HINT)
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The model's classifier head (the layer replaced for our classes)."""
    get: Any = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise TrainError(f"{type(model).__name__} exposes no trainable classifier head", hint=HEAD_HINT)
    return head


def set_phase(model: nn.Module, phase: str, finetune_from: str | None = None) -> list[nn.Parameter]:
    """Freeze for ``adapt`` (only the head learns) or unfreeze for ``finetune`` (from ``finetune_from`` on,
    when given); return the trainable parameters."""
    if phase not in ("adapt", "finetune"):
        raise ValueError(f"unknown phase {phase!r}")
    head_ids = {id(p) for p in classifier(model).parameters()}
    first = finetune_start(model, finetune_from) if phase == "finetune" else None
    for i, p in enumerate(model.parameters()):
        learns = phase == "finetune" and (first is None or i >= first)
        p.requires_grad_(learns or id(p) in head_ids)
    return [p for p in model.parameters() if p.requires_grad]


def finetune_start(model: nn.Module, module_name: str | None) -> int | None:
    """The index (in ``model.parameters()`` order) of ``module_name``'s first parameter; None: all learn."""
    if module_name is None:
        return None
    for i, (name, _) in enumerate(model.named_parameters()):
        if name == module_name or name.startswith(module_name + "."):
            return i
    children = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
    raise ConfigError(
        f"finetune_from: {type(model).__name__} has no module {module_name!r} with parameters",
        hint=f"name one of its modules, e.g. {', '.join(children[-6:])} (dotted names such as stages.3 work)",
    )


def train_mode(model: nn.Module, phase: str, *, frozen_norm: bool = False) -> None:
    """Training mode for ``phase``: the frozen backbone, and BatchNorm that does not learn, in eval mode.

    ``frozen_norm``: in ``finetune`` too, every BatchNorm keeps its ImageNet statistics (Keras' guide).
    """
    if phase == "adapt":
        model.eval()
        classifier(model).train()
        return
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            frozen_layer = bool(params) and not any(p.requires_grad for p in params)  # before finetune_from
            if frozen_norm or frozen_layer:
                module.eval()
