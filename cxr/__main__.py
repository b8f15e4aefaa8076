"""``python -m cxr`` is the ``cxr`` command (so ``torchrun ... -m cxr train base ...`` works)."""

from cxr.cli.main import app

app(prog_name="cxr")
