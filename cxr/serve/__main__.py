"""`python -m cxr.serve ...`: the same command as `cxr serve ...` (used by the Docker entrypoint and tests)."""

from __future__ import annotations

import typer

from cxr.cli.serve import serve


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
