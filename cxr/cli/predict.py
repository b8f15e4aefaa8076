"""`cxr-predict` (stub: being implemented)."""

from __future__ import annotations

import typer

app = typer.Typer(help="cxr-predict (stub)", no_args_is_help=True)


@app.command("version")
def version() -> None:
    """Print the version."""
    from cxr import __version__

    typer.echo(__version__)
