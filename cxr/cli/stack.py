"""`cxr train stack`, `cxr fuse`, `cxr evaluate` (stub: being implemented)."""

from __future__ import annotations

import typer


def stack() -> None:
    """Train the meta-learner (stub)."""
    raise typer.Exit(code=2)


def fuse() -> None:
    """Fuse members and meta-learner into one ONNX graph (stub)."""
    raise typer.Exit(code=2)


def evaluate() -> None:
    """Compare members, voting and stacking on the test split (stub)."""
    raise typer.Exit(code=2)
