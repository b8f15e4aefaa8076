"""`cxr serve` (stub: being implemented)."""

from __future__ import annotations

import typer


def serve() -> None:
    """Serve the HTTP API (stub)."""
    raise typer.Exit(code=2)
