"""Typed mapping: takes plain YAML values and a dataclass type, makes the checked, frozen instance.

``build`` refuses unknown keys with a did-you-mean and wrong types with the key's dotted name; ``check``
and ``did_you_mean`` are the small validation helpers the settings dataclasses share.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from cxr.errors import ConfigError


def build(cls: type, raw: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw`` found at the dotted key ``where``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"unknown key {name!r}",
                hint=did_you_mean(str(key), list(fields)) or f"valid keys: {', '.join(fields)}",
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = coerce(raw[name], hints[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {dotted!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as the type ``tp`` (a dataclass, union, Literal, tuple or scalar), or a ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value if value is not None else {}, where)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), where)
    return _coerce_scalar(value, tp, where)


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return coerce(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} is not {_describe(tp)}")


def _coerce_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
    return tuple(coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
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


def did_you_mean(name: str, options: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else None


def check(key: str, ok: bool, value: Any, expected: str) -> None:
    """Refuse ``value`` at ``key`` unless ``ok``, saying what was ``expected``."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
