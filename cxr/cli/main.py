"""`cxr`: the umbrella command (data, train, export, verify, stack, fuse, evaluate, serve, export-triton, demo,
predict, bench).

Each group lives in its own file; heavy libraries (torch, timm, onnx, sklearn) are imported inside the
commands, so `cxr --help` works with only the core dependencies installed.
"""

from __future__ import annotations

import typer

from cxr import __version__
from cxr.cli import bench, data, demo, export, listen, predict, serve, stack, train, triton
from cxr.cli.common import LEGACY_POSITIONALS, debug_option, deprecated_alias
from cxr.labels import NOTICE

app = typer.Typer(
    name="cxr",
    help=f"cxr {__version__}: train, export, fuse and run a stacking ensemble of chest X-ray classifiers. "
    f"{NOTICE}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    callback=debug_option,
)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
train.app.command("probe")(stack.probe)
train.app.command("stack", hidden=True)(deprecated_alias(stack.stack, "cxr train stack", "cxr stack"))
app.command("export")(export.export)
app.command("verify")(export.verify)
app.command("stack")(stack.stack)
app.command("fuse")(stack.fuse)
app.command("evaluate")(stack.evaluate)
app.command("evaluate-folds")(stack.evaluate_folds)
app.command("serve")(serve.serve)
app.command("listen")(listen.listen)
app.command("export-triton", context_settings=LEGACY_POSITIONALS)(triton.export_triton)
app.command("demo")(demo.demo)
app.add_typer(predict.app, name="predict", help="Same as `cxr-predict`.")
app.add_typer(bench.app, name="bench", help="Same as `cxr-bench`.")


@app.command("version")
def version() -> None:
    """Print the cxr version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
