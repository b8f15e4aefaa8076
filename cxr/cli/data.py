"""`cxr data`: synthetic data, the split manifest, and split statistics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr.cli.common import handle_errors, output_option, warn

if TYPE_CHECKING:
    from cxr.data.manifest import ManifestResult

DEFAULT_MANIFEST = Path("runs/manifest.csv")

app = typer.Typer(help="Synthetic X-rays, the split manifest and its statistics.", no_args_is_help=True)


@app.command("synth")
@handle_errors
def synth(
    output: Annotated[Path, output_option("Folder to write COVID-19_Radiography_Dataset/ into.")],
    per_class: Annotated[
        int, typer.Option(help="Images per class (the largest class with --imbalance).")
    ] = 50,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 299,
    imbalance: Annotated[
        bool, typer.Option(help="Follow the real class ratio 3616/6012/10192/1345.")
    ] = False,
) -> None:
    """Write SYNTHETIC chest X-rays in the Kaggle v4 layout.

    Not real patients, not medical evidence.
    """
    from cxr.data.synthetic import SynthConfig, synthesize

    res = synthesize(
        SynthConfig(out_dir=output, per_class=per_class, seed=seed, size=size, imbalance=imbalance)
    )
    total = sum(res.counts.values())
    typer.echo(f"wrote {total} synthetic images to {res.root} in {res.seconds:.1f} s")
    for c, n in res.counts.items():
        typer.echo(f"  {c:<16} {n}")


@app.command("split")
@handle_errors
def split(
    data_dir: Annotated[Path, typer.Argument(help="The data set folder (Kaggle v4 or flat layout).")],
    output: Annotated[
        Path | None,
        output_option(
            f"Manifest CSV to write (a .json with details goes beside it; default: {DEFAULT_MANIFEST})."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    val: Annotated[float, typer.Option(help="Validation fraction.")] = 0.1,
    test: Annotated[
        float | None,
        typer.Option(help="Test fraction (default 0.1; 1/K with --folds K).", show_default=False),
    ] = None,
    folds: Annotated[
        int,
        typer.Option(
            help="Cross-validation: K folds, each image in the test split of exactly one (--fold I); "
            "fold K-1 is the plain split with --test 1/K. 0: one plain split.",
        ),
    ] = 0,
    fold: Annotated[int, typer.Option(help="Which fold's manifest to write (0..K-1), with --folds.")] = 0,
    blend: Annotated[
        float,
        typer.Option(
            help="Blend fraction, taken out of train: a fourth split only the meta-learner sees "
            "(`cxr stack --source blend`), so validation serves early stopping alone."
        ),
    ] = 0.0,
    near_dup_threshold: Annotated[
        int | None,
        typer.Option(
            help="Near-duplicates: images whose 256-bit perceptual hashes (pHash) differ in at most this "
            "many bits are kept but put in one split (default 24, measured in benchmarks/near_duplicates.md).",
            show_default=False,
        ),
    ] = None,
    no_near_dups: Annotated[
        bool,
        typer.Option("--no-near-dups", help="Turn near-duplicate grouping off (exact duplicates still go)."),
    ] = False,
) -> None:
    """Write a deduplicated, stratified train/val/test manifest.

    Drops exact duplicates (pixel hash), keeps near-duplicates in one split, and splits by a seed.
    """
    from cxr.data.manifest import SplitConfig, build_manifest

    threshold = _near_dup_threshold(near_dup_threshold, no_near_dups)
    if test is None:
        test = 1.0 / folds if folds else 0.1
    res = build_manifest(
        SplitConfig(
            data_dir=data_dir,
            out=output or DEFAULT_MANIFEST,
            seed=seed,
            fractions=(1 - val - test, val, test),
            blend=blend,
            near_duplicate_threshold=threshold,
            folds=folds,
            fold=fold,
        )
    )
    _report_split(res, threshold)


def _near_dup_threshold(given: int | None, off: bool) -> int | None:
    """The near-duplicate threshold of `--near-dup-threshold N | --no-near-dups` (None: grouping off)."""
    from cxr.data import near_duplicates as nd
    from cxr.errors import ConfigError

    if off and given is not None:
        raise ConfigError(
            f"--no-near-dups and --near-dup-threshold {given} contradict each other", hint="pass one of them"
        )
    return None if off else nd.DEFAULT_THRESHOLD if given is None else given


def _report_split(res: ManifestResult, threshold: int | None) -> None:
    """The manifest's counts, what was dropped or grouped, and every warning."""
    from cxr.data import near_duplicates as nd
    from cxr.data.manifest import format_counts

    meta = res.csv_path.with_suffix(".json")
    typer.echo(f"manifest: {res.csv_path} ({len(res.manifest.rows)} images, root {res.manifest.root})")
    typer.echo(format_counts(res.manifest))
    if res.duplicates:
        typer.echo(f"{len(res.duplicates)} exact duplicate(s) dropped (listed in {meta})")
    if threshold is None:
        typer.echo("near-duplicate grouping off")
    elif res.near_duplicate_groups:
        groups = res.near_duplicate_groups
        typer.echo(
            f"{len(groups)} near-duplicate group(s) of {sum(len(g) for g in groups)} images, each kept in "
            f"one split ({nd.HASH_NAME}, threshold {threshold} bits; listed in {meta})"
        )
    else:
        typer.echo(f"no near-duplicates found ({nd.HASH_NAME}, threshold {threshold} bits)")
    if res.conflicts:
        typer.secho(
            f"{len(res.conflicts)} image(s) excluded: identical pixels under different classes "
            "(label conflicts)",
            fg=typer.colors.YELLOW,
        )
    for path, why in res.skipped:
        warn(f"skipped {path}: {why}")
    for w in res.warnings:
        warn(f"warning: {w}")


@app.command("stats")
@handle_errors
def stats(
    manifest: Annotated[Path, typer.Argument(help="A manifest CSV written by `cxr data split`.")],
) -> None:
    """Print class counts per split."""
    from cxr.data.manifest import format_counts, load_manifest

    m = load_manifest(manifest)
    typer.echo(format_counts(m))
    for split_name, missing in m.missing_classes().items():
        for c in missing:
            warn(f"warning: split '{split_name}' has no image of class '{c}'")
