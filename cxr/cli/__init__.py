"""Typer command-line interfaces: one file per command group, thin wrappers over library functions."""
