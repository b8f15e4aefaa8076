"""`cxr`: the umbrella command; each command imports its heavy libraries inside its body."""

from __future__ import annotations

import typer

from cxr import __version__
from cxr.cli import bench, data, demo, evaluate, export, fuse, listen, predict, serve, stack, train, triton
from cxr.cli.common import debug_option, version
from cxr.labels import NOTICE

app = typer.Typer(
    name="cxr",
    help=f"cxr {__version__}: train, export, fuse and run a stacking ensemble of chest X-ray classifiers. "
    f"{NOTICE}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help layout: no type column, descriptions keep >= 44 of 80 columns
    callback=debug_option,
)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.command("export")(export.export)
app.command("verify")(export.verify)
app.command("stack")(stack.stack)
app.command("fuse")(fuse.fuse)
app.command("evaluate")(evaluate.evaluate)
app.command("evaluate-folds")(evaluate.evaluate_folds)
app.command("serve", short_help="Serve the HTTP inference API.")(serve.serve)
app.command("listen", short_help="Run the DICOM node: receive, predict, send SR + SC.")(listen.listen)
app.command("export-triton")(triton.export_triton)
app.command("demo")(demo.demo)
app.add_typer(predict.app, name="predict", help="Same as `cxr-predict`.")
app.add_typer(bench.app, name="bench", help="Same as `cxr-bench`.")


app.command("version")(version)


if __name__ == "__main__":
    app()
