"""`cxr train`: train the base models (`base`); `cxr.cli.main` adds the meta-learner (`stack`) to ``app``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import handle_errors, setup_logging
from cxr.labels import NOTICE

app = typer.Typer(help="Train base models and the meta-learner.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Train base models (`base`) and the meta-learner (`stack`)."""


@app.command("base")
@handle_errors
def base(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (YAML), see configs/.")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Member to train (repeatable); a name under `models:`."),
    ] = None,
    all_members: Annotated[bool, typer.Option("--all", help="Train every member of the config.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set train.epochs=3 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue each member from its last checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Two-phase transfer learning of the base CNNs: head first (frozen backbone), then everything.

    Several GPUs or nodes: start it with torchrun, e.g. `torchrun --nproc_per_node=4 -m cxr train base
    --config CONFIG --all`; train.batch_size stays the global batch (each process takes its share).
    """
    from cxr.errors import ConfigError
    from cxr.train.distributed import context_from_env

    env = context_from_env()
    setup_logging(verbose, rank=env.rank if env.enabled else None, quiet_rank=not verbose)
    if all_members == bool(model):
        raise ConfigError(
            "pass either --model NAME (one or more) or --all", hint="see `cxr train base --help`"
        )
    from cxr.train.config import load_config
    from cxr.train.device import resolve_device
    from cxr.train.distributed import check_global_batch, distributed
    from cxr.train.run import batch_key, prepare_data, train_member

    sets = [*(overrides or []), *(["train.resume=true"] if resume else [])]
    cfg = load_config(config, sets)
    names = [m.name for m in cfg.models] if all_members else list(model or [])
    for name in names:
        m = cfg.member(name)  # unknown names fail before any training, with a did-you-mean
        check_global_batch(
            env, cfg.batch_size(m), batch_key(cfg, m)
        )  # so does a batch N processes can't share
    resolve_device(cfg.train, env)  # so does a device that is not there
    with distributed(cfg.train) as ctx:
        manifest = prepare_data(cfg, ctx)
        stream = None if quiet else sys.stderr
        results = [
            train_member(cfg, name, progress_stream=stream, manifest=manifest, dist=ctx) for name in names
        ]
    if not env.is_main:
        return  # rank 0 reports
    typer.echo(f"run directory: {cfg.run_dir}")
    typer.echo(f"{'member':<18}{'best epoch':>11}{'epochs':>8}{'val acc':>9}{'macro-F1':>10}{'seconds':>9}")
    for r in results:
        typer.echo(
            f"{r.name:<18}{r.best_epoch + 1:>11}{r.epochs_run:>8}{r.metrics['accuracy']:>9.4f}"
            f"{r.metrics['macro_f1']:>10.4f}{r.seconds:>9.0f}"
            + ("  (stopped early)" if r.stopped_early else "")
        )
        if r.bad_images:
            typer.secho(
                f"  {len(r.bad_images)} unreadable image(s) skipped, see the log", fg="yellow", err=True
            )
    typer.echo(NOTICE)
