"""Shared CLI plumbing: errors become a message and an exit code, and the option spellings commands share."""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cxr.errors import ConfigError, CxrError, first_line

F = TypeVar("F", bound=Callable[..., Any])


class ProviderChoice(str, Enum):
    """The providers a command can ask for (`cxr-predict`, `cxr serve`): onnxruntime's, and OpenVINO."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"


class PrecisionChoice(str, Enum):
    """The inference precisions a command can ask for; bf16 only with --provider openvino, int8 on the CPU."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


PRECISION_HELP = (
    "auto = the fastest precision verified for this CPU: int8 (the <model>.int8.onnx beside the model, where "
    "its recorded check accepted this CPU kind; OpenVINO, else onnxruntime's CPU) > bf16 (openvino, a BF16 CPU "
    "and an accepted BF16 check) > fp32; fp32; bf16; int8 (each refused where not verified). The run says "
    "which it chose and why."
)


def version() -> None:
    """Print the cxr version."""
    from cxr import __version__

    typer.echo(__version__)


def warn(text: str) -> None:
    """``text`` in yellow on stderr."""
    typer.secho(text, fg=typer.colors.YELLOW, err=True)


UNEXPECTED_EXIT = 2
CRASH_DIR_ENV = "CXR_LOG_DIR"
DEBUG_ENV = "CXR_DEBUG"  # 1: an unexpected error ends in its traceback (what --debug sets)


def debug_option(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show the full traceback of an unexpected error (before the command)."),
    ] = False,
) -> None:
    """The apps' callback: ``cxr --debug COMMAND`` lets an unexpected error end in its traceback."""
    if debug:  # the process's own environment: the command it runs is the only reader
        os.environ[DEBUG_ENV] = "1"


def crash_log(err: BaseException) -> Path:
    """Write ``err``'s traceback to ``$CXR_LOG_DIR`` (default ~/.cache/cxr/logs) and return the file."""
    folder = Path(os.environ.get(CRASH_DIR_ENV) or Path.home() / ".cache" / "cxr" / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"cxr-error-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    path.write_text(f"cxr command: {' '.join(sys.argv)}\n{text}", encoding="utf-8")
    return path


def handle_errors(fn: F) -> F:
    """Commands' decorator: CxrError -> message + its exit code; anything else -> one line, log file, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CxrError as err:
            typer.secho(f"error: {err.message}", fg=typer.colors.RED, err=True)
            if err.hint:
                typer.echo(f"  hint: {err.hint}", err=True)
            raise typer.Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as err:  # a bug or an unforeseen failure: one clear line, the traceback in a file
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            where = crash_log(err)
            typer.secho(
                f"error: {fn.__name__.replace('_', ' ')} failed unexpectedly: {type(err).__name__}: {first_line(err)}",
                fg=typer.colors.RED,
                err=True,
            )
            typer.echo(
                f"  the traceback is in {where}; run with --debug before the command to see it", err=True
            )
            raise typer.Exit(code=UNEXPECTED_EXIT) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False, *, rank: int | None = None, quiet_rank: bool = True) -> None:
    """Log to stderr; under torchrun each line names its ``rank``, and ranks > 0 only warn (``quiet_rank``)."""
    level = logging.DEBUG if verbose else logging.INFO
    prefix = ""
    if rank is not None:
        prefix = f"[rank {rank}] "
        if rank != 0 and quiet_rank:
            level = logging.WARNING
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# --------------------------------------------------------------------------- one spelling per idea


def run_dir_argument(help: str) -> Any:
    """The positional ``RUN_DIR`` of a stage; ``help`` says what the stage reads from it."""
    return typer.Argument(metavar="RUN_DIR", help=help, show_default=False)


def output_option(help: str) -> Any:
    """``--output/-o``: what the command writes (``help`` says what and where by default)."""
    return typer.Option("--output", "-o", help=help, show_default=False)


def members_option(help: str = "Comma-separated member names (default: every member).") -> Any:
    """``--members a,b``: a subset of a run's members, by name."""
    return typer.Option("--members", help=help, show_default=False)


def model_option(help: str, **kwargs: Any) -> Any:
    """``--model/-m PATH``: the model file the command runs."""
    return typer.Option("--model", "-m", help=help, show_default=False, **kwargs)


def env_option(envvar: str, help: str | None = None, panel: str | None = None) -> Any:
    """An option a server command also reads from ``envvar`` (shown in --help), in the help ``panel``."""
    return typer.Option(envvar=envvar, help=help, rich_help_panel=panel)


def require_extra(command: str, extra: str, *modules: str) -> None:
    """``ConfigError`` with the install fix when one of ``modules`` (an optional extra of cxr) is missing."""
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"`{command}` needs the {extra} extra ({e.name or e} is missing)",
            hint=f"pip install -e '.[{extra}]' in a clone of cxr",
        ) from e


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
OrtThreads = Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")]


def member_names(value: str | None, option: str = "--members") -> tuple[str, ...] | None:
    """``'a, b'`` -> ``('a', 'b')``; None (every member) when not given; a value naming nobody is an error."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ConfigError(
            f"{option} {value!r} names no member", hint=f"for example {option} densenet121,vgg19"
        )
    return names
