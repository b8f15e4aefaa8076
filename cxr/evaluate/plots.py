"""Per method a confusion matrix (not for the reference row) and a reliability diagram, as PNG.

matplotlib's object API with the Agg canvas: no pyplot state, no rcParams change, no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr.calibration import reliability_bins
from cxr.evaluate.types import REFERENCE, MethodResult


def confusion_png(cm: np.ndarray, classes: Sequence[str], title: str, path: Path) -> Path:
    fig = Figure(figsize=(5.2, 4.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    im = ax.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.subplots_adjust(left=0.28, bottom=0.16, right=0.92, top=0.92)
    for i, j in np.ndindex(cm.shape):
        color = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color)
    ax.set_xticks(range(len(classes)), [c.replace(" ", "\n") for c in classes], fontsize=8)
    ax.set_yticks(
        range(len(classes)), [f"{c} (n={int(rows[i, 0])})" for i, c in enumerate(classes)], fontsize=8
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.savefig(path)
    return path


def reliability_png(confidence: np.ndarray, correct: np.ndarray, n_bins: int, title: str, path: Path) -> Path:
    bins = reliability_bins(confidence, correct, n_bins)
    fig = Figure(figsize=(4.6, 4.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 1.0 / n_bins
    filled = [b for b in bins if b.count]
    ax.bar(
        [b.lower for b in filled],
        [b.accuracy or 0.0 for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.plot(
        [float(b.confidence or 0.0) for b in filled],
        [float(b.accuracy or 0.0) for b in filled],
        "o",
        color="tab:red",
        markersize=3,
        label="bin accuracy at its mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.14, bottom=0.12, right=0.96, top=0.92)
    fig.savefig(path)
    return path


def write_figures(
    methods: Sequence[MethodResult], classes: Sequence[str], out: Path, n_bins: int = 15
) -> tuple[Path, ...]:
    """A confusion matrix per method (not for a reference row: stacking before calibration has stacking's
    labels, so stacking's matrix) and a reliability diagram per method."""
    paths = [
        confusion_png(m.metrics.confusion, classes, f"Confusion: {m.name}", out / f"confusion_{m.slug}.png")
        for m in methods
        if m.kind != REFERENCE
    ]
    paths += [
        reliability_png(
            m.confidence, m.correct, n_bins, f"Reliability: {m.name}", out / f"reliability_{m.slug}.png"
        )
        for m in methods
    ]
    return tuple(paths)
