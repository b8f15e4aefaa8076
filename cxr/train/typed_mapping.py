"""Frozen, strict pydantic config dataclasses whose errors are ``ConfigError``s naming the dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError
from typing_extensions import dataclass_transform

from cxr.errors import ConfigError

T = TypeVar("T")


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("path_type", "an empty path")
    return value


Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict still takes an integer (as a float); true/false and "1.5" not
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(lambda p: p.expanduser())]
NULL_MEANS_DEFAULTS = BeforeValidator(lambda v: {} if v is None else v)  # `train:` with nothing under it

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "string_type": "a string",
    "path_type": "a path",
    "tuple_type": "a list",
    "dataclass_type": "a mapping",
}
_UNIONS = (Union, types.UnionType)
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def configclass(where: str) -> Callable[[type[T]], type[T]]:
    """A frozen pydantic dataclass refusing unknown keys; errors name ``where`` (``{name}``: the member's)."""

    def make(cls: type[T]) -> type[T]:
        made = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        init = made.__init__

        @functools.wraps(init)
        def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                prefix = where.replace("{name}", str(kwargs.get("name", "?")))
                raise config_error(e, made, kwargs, prefix) from None

        setattr(made, "__init__", checked_init)  # noqa: B010  (mypy refuses assigning a method)
        return typing.cast("type[T]", made)

    return make


def build(cls: type[T], raw: Any) -> T:
    """An instance of the config class ``cls`` from the plain mapping ``raw``."""
    try:
        return typing.cast(T, TypeAdapter(cls).validate_python(raw))
    except ValidationError as e:
        raise config_error(e, cls, raw) from None


def config_error(err: ValidationError, cls: type, raw: Any, where: str = "") -> ConfigError:
    """The first of pydantic's errors as a ``ConfigError`` with the dotted key and a hint where one helps."""
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # raised by a class's own __post_init__ check
        return cause
    kind, value, loc = first["type"], first["input"], first["loc"]
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length tuple given too few values
        kind, loc = "too_short", loc[:-1]
    key, tp, owner, given = _locate(cls, raw, loc, where)
    if kind == "unexpected_keyword_argument":
        options = [f.name for f in dataclasses.fields(owner)] if owner else []
        hint = did_you_mean(str(loc[-1]), options) or f"valid keys: {', '.join(options)}"
        return ConfigError(f"unknown key {key!r}", hint=hint)
    if kind in ("missing", "missing_argument"):
        return ConfigError(f"missing key {key!r}")
    key = key or "config"
    if kind in _RANGE_ERRORS:
        null = "or null (the default)" if type(None) in typing.get_args(tp) else None
        return ConfigError(f"{key} must be {_describe_range(tp)}, got {value!r}", hint=null)
    if kind == "literal_error":
        base = _unwrap(tp)
        options = [str(a) for a in typing.get_args(base)] if typing.get_origin(base) is Literal else []
        return ConfigError(
            f"{key}: {value!r} is not one of {', '.join(options)}", hint=did_you_mean(str(value), options)
        )
    if typing.get_origin(tp) in _UNIONS:  # every member of the union refused it
        return ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if kind in ("too_short", "too_long") and typing.get_origin(_unwrap(tp)) is tuple:
        n = len(typing.get_args(_unwrap(tp)))
        return ConfigError(f"{key}: expected {n} values, got {len(given)} ({given!r})")
    expected = _EXPECTED.get(kind)
    text = f"expected {expected}" if expected else first["msg"][:1].lower() + first["msg"][1:]
    return ConfigError(f"{key}: {text}, got {value!r}")


def _locate(cls: type, raw: Any, loc: tuple[int | str, ...], where: str) -> tuple[str, Any, type | None, Any]:
    """The dotted key of pydantic's ``loc``, the annotation there, its dataclass and the value given."""
    parts = [where] if where else []
    tp: Any = cls
    owner: type | None = None
    for part in loc:
        base = _unwrap(tp)
        if isinstance(part, str) and dataclasses.is_dataclass(base):
            owner = typing.cast(type, base)
            tp = typing.get_type_hints(owner, include_extras=True).get(part)
            raw = raw.get(part) if isinstance(raw, Mapping) else None
            parts.append(part)
        elif isinstance(part, int) and typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            tp = args[0] if args[-1] is Ellipsis else args[part] if part < len(args) else None
            raw = raw[part] if isinstance(raw, list | tuple) and 0 <= part < len(raw) else None
            name = raw.get("name") if isinstance(raw, Mapping) else None
            parts.append(name if isinstance(name, str) and name else str(part))
        # anything else names a member of a union ("bool", "function-after[...]"), not a key
    return ".".join(parts), tp, owner, raw


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata and, when it is ``X | None``, without the ``None``."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in _UNIONS:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    parts = [
        _NAMES.get(_unwrap(a), getattr(_unwrap(a), "__name__", str(a))) for a in args if a is not type(None)
    ]
    return " or ".join(parts + (["null"] if type(None) in args else []))


def _describe_range(tp: Any) -> str:
    """``positive``, ``1 or more``, ``in [0, 1)``: the bounds annotated on ``tp`` (``Ge``, ``Interval``)."""
    b = {
        k: v
        for m in _metadata(tp)
        for k in ("gt", "ge", "lt", "le")
        if (v := getattr(m, k, None)) is not None
    }
    if "lt" in b or "le" in b:
        low = f"({b['gt']:g}" if "gt" in b else f"[{b.get('ge', 0):g}"
        return f"in {low}, {b['le']:g}]" if "le" in b else f"in {low}, {b['lt']:g})"
    return (
        "positive" if b.get("gt") == 0 else f"more than {b['gt']:g}" if "gt" in b else f"{b['ge']:g} or more"
    )


def _metadata(tp: Any) -> list[Any]:
    """Every ``Annotated`` constraint on ``tp``, through unions (``Annotated[int, Ge(1)] | None``)."""
    if typing.get_origin(tp) is Annotated:
        return [*tp.__metadata__, *_metadata(typing.get_args(tp)[0])]
    if typing.get_origin(tp) in _UNIONS:
        return [m for a in typing.get_args(tp) for m in _metadata(a)]
    return []


def did_you_mean(name: str, options: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else None
