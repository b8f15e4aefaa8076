"""`cxr train`: train the base models (`base`) and the meta-learner (`stack`)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train base models and the meta-learner.", no_args_is_help=True)


@app.command("base")
def base() -> None:
    """Train base models (stub: being implemented)."""
    raise typer.Exit(code=2)
