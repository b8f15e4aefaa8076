"""`cxr demo` (stub: being implemented)."""

from __future__ import annotations

import typer


def demo() -> None:
    """Run the whole study on synthetic data (stub)."""
    raise typer.Exit(code=2)
