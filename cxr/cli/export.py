"""`cxr export`, `cxr verify` (stub: being implemented)."""

from __future__ import annotations

import typer


def export() -> None:
    """Export base models to ONNX (stub)."""
    raise typer.Exit(code=2)


def verify() -> None:
    """Verify exported models against PyTorch (stub)."""
    raise typer.Exit(code=2)
