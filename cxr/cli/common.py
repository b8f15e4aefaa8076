"""Shared CLI plumbing: errors become a message and an exit code (never a traceback), the option spellings
every command shares, and the deprecation notices of the old spellings.

One name per idea, in every command:

- ``RUN_DIR`` (positional): the run directory a stage reads and writes (`cxr train base` takes it from its
  config's ``run_dir``);
- ``--members a,b``: a subset of a run's members, by name, comma-separated;
- ``--model/-m PATH``: the model file a command runs;
- ``--output/-o PATH``: what a command writes;
- ``--member-models FILES|DIR`` (`cxr-bench run`): member model files, not names, so not ``--members``.

The old spellings (``--out``, ``--models``, ``cxr train base -m NAME``, the positional MODEL of
`cxr-bench run` and MODEL OUT of `cxr export-triton`, `cxr data synth OUT`, ``cxr demo --run-dir``,
``cxr-bench run --members``, ``cxr train stack``) still work for one release, hidden from ``--help``, and print
a notice on stderr (``deprecated``); behaviour and exit codes are otherwise the same.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cxr.errors import ConfigError, CxrError, first_line

F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")


class ProviderChoice(str, Enum):
    """The providers a command can ask for (`cxr-predict`, `cxr serve`): onnxruntime's, and OpenVINO."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"


class PrecisionChoice(str, Enum):
    """The inference precisions a command can ask for; bf16 only with --provider openvino."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


PRECISION_HELP = (
    "openvino: auto = bf16 where the CPU has it and the model's recorded BF16 check accepted it, else fp32; "
    "fp32; bf16 (refused without both). onnxruntime providers run the file as stored (auto/fp32)."
)


def echo_error(err: CxrError) -> None:
    typer.secho(f"error: {err.message}", fg=typer.colors.RED, err=True)
    if err.hint:
        typer.echo(f"  hint: {err.hint}", err=True)


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


def _debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


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
    """Decorator for commands: CxrError -> message on stderr + ``typer.Exit(err.exit_code)``; any other
    exception -> one line naming it and the log file with its traceback, exit code 2 (``--debug``: raise)."""

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
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as err:  # a bug or an unforeseen failure: one clear line, the traceback in a file
            if _debug_requested():
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
    """Log to stderr. Under torchrun (``rank`` given) each line names its process, and processes other
    than rank 0 log only warnings and errors unless ``quiet_rank`` is false."""
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


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
OrtThreads = Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")]

# The deprecated spellings: hidden from --help, each read once through ``renamed`` or ``legacy_positionals``.
OldOut = Annotated[Path | None, typer.Option("--out", hidden=True)]
OldModels = Annotated[str | None, typer.Option("--models", hidden=True)]


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


# --------------------------------------------------------------------------- deprecations


def deprecated(old: str, new: str) -> None:
    """The notice for an old spelling, on stderr: ``cxr: `--out` is deprecated ...; use `--output```."""
    typer.secho(
        f"cxr: {old} is deprecated and will be removed in the next release; use {new}",
        fg=typer.colors.YELLOW,
        err=True,
    )


def renamed(value: V | None, old_value: V | None, *, old: str, new: str) -> V | None:
    """The value of option ``new``, else that of its deprecated spelling ``old`` (with the notice)."""
    if old_value is None:
        return value
    deprecated(f"`{old}`", f"`{new}`")
    if value is not None:
        raise ConfigError(f"{new} and {old} (its old spelling) were both given", hint=f"pass {new} only")
    return old_value


LEGACY_POSITIONALS: dict[str, Any] = {"allow_extra_args": True}
"""``context_settings`` of a command whose old positional arguments became options: they arrive, unlisted in
``--help``, in ``ctx.args`` (unknown options are still refused) for ``legacy_positionals``."""


def legacy_positionals(
    command: str, args: Sequence[str], *slots: tuple[Path | None, str, str]
) -> list[Path | None]:
    """Positional arguments of an older release, for the options that replaced them.

    Each ``(value, NAME, --option)`` in ``slots`` keeps ``value`` when the option was given; otherwise it
    takes the next of ``args`` (with the notice). Arguments left over are a usage error.
    """
    out: list[Path | None] = []
    pending = list(args)
    for value, name, option in slots:
        if value is None and pending:
            value = Path(pending.pop(0))
            deprecated(f"{name} as a positional argument of `{command}`", f"`{option} {name}`")
        out.append(value)
    if pending:
        raise ConfigError(f"unexpected argument(s): {' '.join(pending)}", hint=f"see `{command} --help`")
    return out


def require(value: V | None, option: str, command: str) -> V:
    """An option that replaced a required positional: required by hand (the positional may stand in)."""
    if value is None:
        raise ConfigError(f"`{command}` needs {option}", hint=f"see `{command} --help`")
    return value


def deprecated_alias(fn: F, old: str, new: str) -> F:
    """``fn`` under an old command name: the same options and behaviour, after the notice."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deprecated(f"`{old}`", f"`{new}`")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
