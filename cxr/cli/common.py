"""Shared CLI plumbing: turn ``CxrError`` into a clear message and an exit code, never a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer

from cxr.errors import CxrError

F = TypeVar("F", bound=Callable[..., Any])


class ProviderChoice(str, Enum):
    """The onnxruntime providers a command can ask for (`cxr-predict`, `cxr serve`)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


def echo_error(err: CxrError) -> None:
    typer.secho(f"error: {err.message}", fg=typer.colors.RED, err=True)
    if err.hint:
        typer.echo(f"  hint: {err.hint}", err=True)


def handle_errors(fn: F) -> F:
    """Decorator for commands: CxrError -> message on stderr + ``typer.Exit(err.exit_code)``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CxrError as err:
            echo_error(err)
            raise typer.Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False, *, rank: int | None = None, quiet_rank: bool = True) -> None:
    """Log to stderr. Under torchrun (``rank`` given) each line names its process, and processes other
    than rank 0 log only warnings and errors unless ``quiet_rank`` is false."""
    level = logging.DEBUG if verbose else logging.INFO
    prefix = ""
    if rank is not None:
        prefix = f"[rank {rank}] "
        if rank != 0 and quiet_rank:
            level = logging.WARNING
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
