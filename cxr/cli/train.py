"""`cxr train`: train the base models (`base`) and the linear-probe baseline (`probe`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr.cli.common import (
    Verbose,
    handle_errors,
    member_names,
    members_option,
    run_dir_argument,
    setup_logging,
    warn,
)
from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.train.config import TrainConfig
    from cxr.train.distributed import DistContext
    from cxr.train.run import TrainResult

app = typer.Typer(help="Train the base models and the linear-probe baseline.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Train the base models (`base`) and the linear-probe baseline (`probe`); the meta-learner is `cxr stack`."""


@app.command("base")
@handle_errors
def base(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (YAML), see configs/.")],
    members: Annotated[
        str | None, members_option("Members to train, comma-separated names under the config's `models:`.")
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
    verbose: Verbose = False,
) -> None:
    """Train the base CNNs: head first, then every layer.

    Two-phase transfer learning: the head on a frozen backbone, then the whole network.

    The run directory is the config's `run_dir`. Several GPUs or nodes: start it with torchrun, e.g.
    `torchrun --nproc_per_node=4 -m cxr train base --config CONFIG --all`; train.batch_size stays the
    global batch (each process takes its share).
    """
    from cxr.errors import ConfigError
    from cxr.train.config import load_config
    from cxr.train.distributed import context_from_env, distributed
    from cxr.train.run import prepare_data, train_member

    env = context_from_env()
    setup_logging(verbose, rank=env.rank if env.enabled else None, quiet_rank=not verbose)
    if all_members == (members is not None):
        raise ConfigError("pass either --members NAME[,NAME...] or --all", hint="see `cxr train base --help`")
    sets = [*(overrides or []), *(["train.resume=true"] if resume else [])]
    cfg = load_config(config, sets)
    names = [m.name for m in cfg.models] if all_members else list(member_names(members) or ())
    _check_before_training(cfg, names, env)
    with distributed(cfg.train) as ctx:
        manifest = prepare_data(cfg, ctx)
        stream = None if quiet else sys.stderr
        results = [
            train_member(cfg, name, progress_stream=stream, manifest=manifest, dist=ctx) for name in names
        ]
    if env.is_main:  # rank 0 reports
        _report(cfg, results)


@app.command("probe")
@handle_errors
def probe(
    run_dir: Annotated[Path, run_dir_argument("Run directory with manifest.csv.")],
    pretrained: Annotated[
        str, typer.Option(help="ImageNet weights: a weights file or folder, or 'true' for timm's download.")
    ] = "true",
    backbone: Annotated[
        str, typer.Option(help="Frozen backbone (a cxr member name or timm model).")
    ] = "xception",
    input_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores).")] = None,
) -> None:
    """Fit the linear-probe baseline on a frozen backbone.

    Logistic regression on a frozen ImageNet backbone's pooled features.
    """
    from cxr.train import ProbeConfig, describe_probe, linear_probe

    weights: bool | Path = True if pretrained.lower() == "true" else Path(pretrained)
    cfg = ProbeConfig(
        run_dir=run_dir, backbone=backbone, pretrained=weights, input_size=input_size, threads=threads
    )
    typer.echo(describe_probe(cfg, linear_probe(cfg)))
    typer.echo(NOTICE)


def _check_before_training(cfg: TrainConfig, names: list[str], env: DistContext) -> None:
    """Unknown members, a batch the processes can't share and a missing device fail before any training."""
    from cxr.train.distributed import check_global_batch, resolve_device
    from cxr.train.run import batch_key

    for name in names:
        m = cfg.member(name)
        check_global_batch(env, cfg.batch_size(m), batch_key(cfg, m))
    resolve_device(cfg.train, env)


def _report(cfg: TrainConfig, results: list[TrainResult]) -> None:
    from cxr.train import describe

    typer.echo(f"run directory: {cfg.run_dir}")
    typer.echo(describe(results))
    for r in results:
        if r.bad_images:
            warn(f"{r.name}: {len(r.bad_images)} unreadable image(s) skipped, see the log")
    typer.echo(NOTICE)
