"""Training configuration: YAML mapped onto frozen, typed dataclasses, with ``--set key=value`` overrides.

Takes: a YAML file (see ``configs/*.yaml``) and overrides such as ``train.epochs=3``,
``run_dir=/tmp/run``, ``data.manifest=runs/manifest.csv``, ``models.0.input_size=32`` or
``models.*.pretrained=false``. Makes: a ``TrainConfig``. Unknown keys are refused with a did-you-mean,
values of the wrong type or out of range with the key's dotted name; nothing is evaluated as code.
The pydantic dataclasses live in ``cxr.train.settings``, re-exported here; ``cxr.train.typed_mapping``
turns pydantic's errors into ``ConfigError``s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cxr.errors import ConfigError
from cxr.train.settings import (
    MIN_INPUT,
    MONITORED_METRICS,
    DataConfig,
    EarlyStoppingConfig,
    MemberConfig,
    Optimizer,
    Precision,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
    TrainSettings,
)
from cxr.train.typed_mapping import build, dump

__all__ = [
    "MIN_INPUT",
    "MONITORED_METRICS",
    "DataConfig",
    "EarlyStoppingConfig",
    "MemberConfig",
    "Optimizer",
    "Precision",
    "ScheduleConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainSettings",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
]


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
    return dump(cfg)


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
